/**
 * The "HPC LLM" sidebar: for a profile, a launch form (folded away until asked for), the launches and
 * renewals under way, and your servers with their state, GPUs, time left, idle time and live metrics;
 * Stop, Logs, Renew near the time limit, and "Insert client code". It polls the server extension while it
 * is shown, backing off while nothing changes, and stands by while hidden. JupyterLab notifications say
 * when a server is ready, failed (with the diagnosis) or nears its time limit.
 */
import { Notification } from '@jupyterlab/apputils';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { ApiError, requestAPI } from './api';
import { element } from './dom';
import { LaunchForm } from './launchform';
import { clientCode, fingerprint, launchLine, newWarnings, nextInterval, serverCard } from './logic';
import type {
  LaunchModel,
  MetricsModel,
  OptionModel,
  ProfileModel,
  ProfilesModel,
  ServerModel,
  StoppedModel
} from './models';

export const MIN_INTERVAL = 10_000;
export const MAX_INTERVAL = 120_000;
export const LAUNCH_INTERVAL = 1_500;

/** What the sidebar asks of JupyterLab (index.ts): a cell in the active notebook, a log in the main area. */
export interface SidebarHooks {
  insertCode(code: string): boolean;
  openLogs(profile: string, server: ServerModel): void;
}

export class HpcllmSidebar extends Widget {
  readonly poll: Poll;
  private profiles: string[] = [];
  private profile = '';
  private servers: ServerModel[] = [];
  private metrics = new Map<string, MetricsModel>();
  private launches = new Map<string, LaunchModel>();
  private warned = new Set<string>();
  private problem = ''; // why the last read failed (cleared by the next good one)
  private notice = ''; // what the last action did (kept until the next action)
  private seen = '';
  private interval = MIN_INTERVAL;
  private options: OptionModel[] | null = null;
  private form: LaunchForm | null = null;
  private launchTimer: number | undefined;
  private readonly header = element('div', 'jp-hpcllm-header');
  private readonly formHost = element('div', 'jp-hpcllm-formhost');
  private readonly formToggle = element('button', 'jp-mod-styled', 'New server…');
  private readonly body = element('div', 'jp-hpcllm-body');

  constructor(private readonly hooks: SidebarHooks) {
    super();
    this.id = 'jp-hpcllm-sidebar';
    this.addClass('jp-hpcllm-sidebar');
    this.title.caption = 'HPC LLM: your model servers on the cluster';
    this.formHost.hidden = true;
    this.formToggle.onclick = () => void this.toggleForm();
    this.node.append(this.header, this.formHost, this.body);
    this.poll = new Poll({
      factory: () => this.refresh(),
      frequency: { interval: MIN_INTERVAL, backoff: true, max: MAX_INTERVAL },
      // Only while the sidebar is shown, and never while the browser tab is hidden.
      standby: () => (this.isVisible ? 'when-hidden' : true),
      name: 'jupyter-hpcllm:servers'
    });
    this.renderHeader();
    this.render();
  }

  /** Shown again: read at once (the poll stood by while hidden). */
  protected onAfterShow(): void {
    void this.poll.refresh();
  }

  dispose(): void {
    this.poll.dispose();
    this.form?.dispose();
    window.clearTimeout(this.launchTimer);
    super.dispose();
  }

  /** Read the profiles (once), the servers and their metrics; render. */
  async refresh(): Promise<void> {
    try {
      if (!this.profile) {
        const known = await requestAPI<ProfilesModel>('profiles');
        this.profiles = known.profiles;
        this.profile = known.default;
        this.renderHeader();
      }
      const query = this.query();
      this.servers = await requestAPI<ServerModel[]>(`servers${query}`);
      const running = this.servers.filter(s => s.state === 'RUNNING');
      const metrics = new Map<string, MetricsModel>();
      await Promise.all(
        running.map(async s => {
          try {
            metrics.set(s.job_id, await requestAPI<MetricsModel>(`servers/${s.job_id}/metrics${query}`));
          } catch {
            // still loading, or an older job: no numbers this time
          }
        })
      );
      this.metrics = metrics;
      this.problem = '';
      this.warnNearWalltime();
    } catch (error) {
      this.problem = errorText(error);
    }
    const now = fingerprint(this.servers);
    this.interval = nextInterval(this.interval, now !== this.seen, MIN_INTERVAL, MAX_INTERVAL);
    this.seen = now;
    this.poll.frequency = { ...this.poll.frequency, interval: this.interval };
    this.render();
  }

  /** Open the launch form (with these values, e.g. from a command) and plan them. */
  async showForm(values: Record<string, string> = {}): Promise<void> {
    if (!this.form) {
      await this.toggleForm();
    }
    this.form?.fill(values);
  }

  private query(): string {
    return `?profile=${encodeURIComponent(this.profile)}`;
  }

  private async toggleForm(): Promise<void> {
    if (this.form) {
      this.form.dispose();
      this.form = null;
      this.formHost.textContent = '';
      this.formHost.hidden = true;
      this.formToggle.textContent = 'New server…';
      return;
    }
    try {
      this.options ??= await requestAPI<OptionModel[]>('options');
      if (!this.profile) {
        await this.refresh();
      }
      const profile = await requestAPI<ProfileModel>(`profiles/${encodeURIComponent(this.profile)}`);
      this.form = new LaunchForm(profile, this.options, launch => {
        this.follow(launch);
        void this.toggleForm(); // launched: the form folds away, the launch's progress shows
      });
      this.formHost.appendChild(this.form.node);
      this.formHost.hidden = false;
      this.formToggle.textContent = 'Close the form';
    } catch (error) {
      this.notice = errorText(error);
      this.render();
    }
  }

  /** Follow a launch or renewal until it ends; notify then. */
  private follow(launch: LaunchModel): void {
    this.launches.set(launch.id, launch);
    this.render();
    this.scheduleLaunches();
  }

  private scheduleLaunches(): void {
    window.clearTimeout(this.launchTimer);
    if ([...this.launches.values()].some(l => !l.done)) {
      this.launchTimer = window.setTimeout(() => void this.readLaunches(), LAUNCH_INTERVAL);
    }
  }

  private async readLaunches(): Promise<void> {
    await Promise.all(
      [...this.launches.values()].filter(l => !l.done).map(async before => {
        let now: LaunchModel;
        try {
          now = await requestAPI<LaunchModel>(`launches/${before.id}`);
        } catch (error) {
          now = { ...before, done: true, stage: 'failed', error: errorText(error) };
        }
        this.launches.set(now.id, now);
        if (now.done) {
          this.announce(now);
        }
      })
    );
    this.render();
    this.scheduleLaunches();
  }

  private announce(launch: LaunchModel): void {
    const line = launchLine(launch);
    if (line.outcome === 'ready') {
      const server = { job_id: launch.job_id ?? '' } as ServerModel;
      Notification.success(`${launch.model} is ready (job ${launch.job_id}).`, {
        autoClose: 10_000,
        actions: [{ label: 'Insert client code', callback: () => this.insert(server, launch.profile) }]
      });
      this.seen = '';
      void this.poll.refresh();
    } else if (line.outcome === 'failed') {
      Notification.error(`${launch.model} did not start: ${launch.error}`, { autoClose: false });
    }
  }

  private warnNearWalltime(): void {
    for (const server of newWarnings(this.servers, this.warned)) {
      this.warned.add(server.job_id);
      Notification.warning(server.walltime_warning ?? '', {
        autoClose: false,
        actions: [{ label: 'Renew', callback: () => void this.renew(server) }]
      });
    }
  }

  private async act(work: () => Promise<void>): Promise<void> {
    this.notice = '';
    try {
      await work();
    } catch (error) {
      this.notice = errorText(error);
    }
    this.render();
    void this.poll.refresh();
  }

  private stop(server: ServerModel): Promise<void> {
    return this.act(async () => {
      const stopped = await requestAPI<StoppedModel>(`servers/${server.job_id}${this.query()}`, { method: 'DELETE' });
      this.notice = stopped.message;
    });
  }

  private renew(server: ServerModel): Promise<void> {
    return this.act(async () => {
      this.follow(await requestAPI<LaunchModel>(`servers/${server.job_id}/renew${this.query()}`, { method: 'POST' }));
    });
  }

  private cancel(launch: LaunchModel): Promise<void> {
    return this.act(async () => {
      this.launches.set(launch.id, await requestAPI<LaunchModel>(`launches/${launch.id}`, { method: 'DELETE' }));
    });
  }

  private insert(server: ServerModel, profile: string): void {
    if (!this.hooks.insertCode(clientCode(server, profile))) {
      this.notice = 'Open a notebook first: the code goes into the active one.';
      this.render();
    }
  }

  private renderHeader(): void {
    this.header.textContent = '';
    this.header.appendChild(element('h2', '', 'HPC LLM'));
    if (this.profiles.length) {
      const select = element('select', 'jp-hpcllm-profile jp-mod-styled');
      for (const name of this.profiles) {
        const option = select.appendChild(element('option', '', name));
        option.value = name;
        option.selected = name === this.profile;
      }
      select.onchange = () => {
        this.profile = select.value;
        this.seen = '';
        if (this.form) {
          void this.toggleForm().then(() => this.toggleForm()); // the new profile's choices
        }
        void this.poll.refresh();
      };
      this.header.appendChild(select);
    }
    this.header.appendChild(this.formToggle);
  }

  private render(): void {
    const node = this.body;
    node.textContent = '';
    for (const launch of this.launches.values()) {
      node.appendChild(this.renderLaunch(launch));
    }
    for (const text of [this.notice, this.problem].filter(Boolean)) {
      node.appendChild(element('p', 'jp-hpcllm-message', text));
    }
    if (!this.servers.length) {
      node.appendChild(element('p', 'jp-hpcllm-empty', 'No servers of yours on this profile.'));
    }
    for (const server of this.servers) {
      node.appendChild(this.renderServer(server));
    }
  }

  private renderLaunch(launch: LaunchModel): HTMLElement {
    const line = launchLine(launch);
    const box = element('div', `jp-hpcllm-launch jp-hpcllm-${line.outcome}`);
    box.dataset.launch = launch.id;
    box.dataset.outcome = line.outcome;
    box.appendChild(element('div', 'jp-hpcllm-facts', line.text));
    if (line.outcome === 'running') {
      const bar = box.appendChild(element('progress', ''));
      if (line.fraction !== null) {
        bar.value = line.fraction;
      }
      box.appendChild(element('button', 'jp-mod-styled', 'Cancel')).onclick = () => void this.cancel(launch);
    } else {
      box.appendChild(element('button', 'jp-mod-styled', 'Dismiss')).onclick = () => {
        this.launches.delete(launch.id);
        this.render();
      };
    }
    return box;
  }

  private renderServer(server: ServerModel): HTMLElement {
    const card = serverCard(server, this.metrics.get(server.job_id) ?? null);
    const box = element('div', 'jp-hpcllm-server');
    box.dataset.job = server.job_id;
    box.dataset.state = server.state;
    box.appendChild(element('div', 'jp-hpcllm-title', card.title));
    for (const line of card.lines) {
      box.appendChild(element('div', 'jp-hpcllm-facts', line));
    }
    if (card.warning) {
      box.appendChild(element('div', 'jp-hpcllm-warning', card.warning));
    }
    const button = (label: string, action: () => void): void => {
      box.appendChild(element('button', 'jp-mod-styled', label)).onclick = action;
    };
    const profile = this.profile;
    button('Stop', () => void this.stop(server));
    button('Logs', () => this.hooks.openLogs(profile, server));
    if (card.renewable) {
      button('Renew', () => void this.renew(server));
    }
    if (server.state === 'RUNNING') {
      button('Insert client code', () => this.insert(server, profile));
    }
    return box;
  }
}

function errorText(error: unknown): string {
  return error instanceof ApiError ? error.message : String(error);
}
