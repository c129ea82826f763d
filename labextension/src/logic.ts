/**
 * What the sidebar decides, as pure functions (unit-tested without JupyterLab): the lines a server shows,
 * when to offer Renew, the code "Insert client code" puts in a notebook, and the polling backoff.
 */
import type { MetricsModel, ServerModel } from './models';

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
