/**
 * What the sidebar decides, as pure functions (unit-tested without JupyterLab): the lines a server shows,
 * when to offer Renew, the code "Insert client code" puts in a notebook, and the polling backoff.
 */
import type { LaunchModel, MetricsModel, ServerModel } from './models';

/** The sidebar's card of one server: a title, lines of facts, and whether to offer Renew. */
export interface ServerCard {
  title: string;
  lines: string[];
  warning: string | null;
  renewable: boolean;
}

export function serverCard(server: ServerModel, metrics: MetricsModel | null): ServerCard {
  const lines = [
    [server.engine ?? '?', server.state, server.gpus ?? '?'].join(' · '),
    server.node ? `on ${server.node}` : `waiting: ${server.left || 'in the queue'}`
  ];
  if (server.state === 'RUNNING' && server.time_left) {
    lines.push(`${server.time_left} left`);
  }
  if (server.idle) {
    lines.push(server.idle);
  }
  for (const [label, value] of metrics?.rows ?? []) {
    lines.push(`${label}: ${value}`);
  }
  return {
    title: `${server.model ?? '?'} (job ${server.job_id})`,
    lines,
    warning: server.walltime_warning,
    renewable: server.walltime_warning !== null
  };
}

/** The cell "Insert client code" adds: attaches this notebook's kernel and makes `client`. */
export function clientCode(server: ServerModel, profile: string): string {
  const quoted = /^[A-Za-z0-9_.-]+$/.test(profile) ? profile : `'${profile.replace(/'/g, '')}'`;
  return [
    '%load_ext jupyter_hpcllm',
    `%hpcllm attach ${server.job_id} --profile ${quoted}`,
    '# `client` is an openai.OpenAI for this server; %%llm talks to it too.'
  ].join('\n');
}

/**
 * The next polling interval: back to `min` when something changed, else twice the last, up to `max`.
 * (The sidebar polls only while shown; see index.ts.)
 */
export function nextInterval(last: number, changed: boolean, min: number, max: number): number {
  if (changed) {
    return min;
  }
  return Math.min(max, Math.max(min, last * 2));
}

/** A fingerprint of what the sidebar shows: a poll changed something when it differs. */
export function fingerprint(servers: ServerModel[]): string {
  return JSON.stringify(servers.map(s => [s.job_id, s.state, s.node, s.time_left, s.idle]));
}

/** How the parser fields say "no parser": the word a user types, sent as '' (absent means automatic). */
export const NO_PARSER = 'none';
const PARSER_OPTIONS = new Set(['tool_call_parser', 'reasoning_parser']);

/**
 * A launch form's values as the options of a JSON body: empty fields are left out (the profile's default
 * or the automatic choice), text is trimmed, and "none" in a parser field means no parser ('').
 */
export function formOptions(values: Record<string, string>): Record<string, string> {
  const options: Record<string, string> = {};
  for (const [name, raw] of Object.entries(values)) {
    const value = raw.trim();
    if (!value) {
      continue;
    }
    options[name] = PARSER_OPTIONS.has(name) && value.toLowerCase() === NO_PARSER ? '' : value;
  }
  return options;
}

/** A launch (or renewal) as the sidebar shows it while it runs and after. */
export interface LaunchLine {
  text: string;
  /** 0..1 while the weights load (n of N files); null when there is no measure. */
  fraction: number | null;
  outcome: 'running' | 'ready' | 'failed' | 'cancelled';
}

export function launchLine(launch: LaunchModel): LaunchLine {
  const job = launch.job_id ? ` (job ${launch.job_id})` : '';
  let outcome: LaunchLine['outcome'] = 'running';
  if (launch.done) {
    outcome = launch.error === null ? 'ready' : launch.stage === 'cancelled' ? 'cancelled' : 'failed';
  }
  const shards = launch.shards;
  const fraction = shards && shards[1] > 0 ? Math.min(1, shards[0] / shards[1]) : null;
  const message = outcome === 'failed' || outcome === 'cancelled' ? launch.error ?? launch.message : launch.message;
  return { text: `${launch.model}${job}: ${message} [${clock(launch.elapsed)}]`, fraction, outcome };
}

/** Seconds as m:ss or h:mm:ss. */
export function clock(seconds: number): string {
  const whole = Math.max(0, Math.round(seconds));
  const [h, m, s] = [Math.floor(whole / 3600), Math.floor((whole % 3600) / 60), whole % 60];
  const two = (n: number) => String(n).padStart(2, '0');
  return h ? `${h}:${two(m)}:${two(s)}` : `${m}:${two(s)}`;
}

/** The servers whose walltime warning is new since the last poll (each is told once). */
export function newWarnings(servers: ServerModel[], told: Set<string>): ServerModel[] {
  return servers.filter(s => s.walltime_warning !== null && !told.has(s.job_id));
}

/** What the kernel says it is attached to (`jupyter_hpcllm.notebook.session.attached`). */
export interface AttachedModel {
  job_id: string;
  model: string;
  engine: string;
  node: string;
  profile: string;
  seconds_left: number | null;
}

/** The status bar's text for the notebook's server; `sinceSeconds`: how old the kernel's answer is. */
export function statusText(attached: AttachedModel, sinceSeconds: number): string {
  const left = attached.seconds_left === null ? '' : ` · ${clock(attached.seconds_left - sinceSeconds)} left`;
  return `${attached.model} · job ${attached.job_id}${left}`;
}

/**
 * The expression the status bar asks the kernel (silently): the session's server as JSON, or None when
 * jupyter_hpcllm was never loaded there (it imports nothing).
 */
export const ATTACHED_EXPRESSION =
  "__import__('sys').modules['jupyter_hpcllm.notebook.session'].attached() " +
  "if 'jupyter_hpcllm.notebook.session' in __import__('sys').modules else None";

/** The kernel's text/plain answer to ATTACHED_EXPRESSION as a model (null: none, or not understood). */
export function parseAttached(textPlain: string | undefined): AttachedModel | null {
  if (!textPlain || textPlain === 'None') {
    return null;
  }
  try {
    const found = JSON.parse(textPlain) as AttachedModel;
    return typeof found.job_id === 'string' ? found : null;
  } catch {
    return null;
  }
}
