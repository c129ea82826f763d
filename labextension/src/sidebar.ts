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
  private formWanted = false; // "New server…" was clicked and the form not closed since
  private formRequest = 0; // the latest opening of the form: an older one finishing late is dropped
  private launchTimer: number | undefined;
  private readingLaunches = false;
  private busy = new Set<string>(); // actions on their way ("stop:JOB", "renew:JOB"): their buttons wait
  private renewals = new Map<string, string>(); // job -> the id of its renewal started here
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
    this.formToggle.onclick = () => void (this.formWanted ? this.closeForm() : this.openForm());
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
      const profile = this.profile;
      const query = this.query(profile);
      const servers = await requestAPI<ServerModel[]>(`servers${query}`);
      const running = servers.filter(s => s.state === 'RUNNING');
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
      if (profile !== this.profile) {
        return; // another profile was chosen meanwhile: its own read shows its servers
      }
      this.servers = servers;
      this.metrics = metrics;
      this.problem = '';
      this.warnNearWalltime(profile);
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
      await this.openForm();
    }
    this.form?.fill(values);
  }

  private query(profile = this.profile): string {
    return `?profile=${encodeURIComponent(profile)}`;
  }

  /** Open the form for the current profile (closing one open for another). */
  private async openForm(): Promise<void> {
    this.closeForm();
    this.formWanted = true;
    this.formToggle.textContent = 'Close the form';
    const request = this.formRequest;
    try {
      this.options ??= await requestAPI<OptionModel[]>('options');
      if (!this.profile) {
        await this.refresh();
      }
      const profile = await requestAPI<ProfileModel>(`profiles/${encodeURIComponent(this.profile)}`);
      if (request !== this.formRequest) {
        return; // closed, or opened again for another profile, meanwhile
      }
      const form: LaunchForm = new LaunchForm(profile, this.options, launch => {
        this.follow(launch);
        if (this.form === form) {
          this.closeForm(); // launched: the form folds away, the launch's progress shows
        }
      });
      this.form = form;
      this.formHost.appendChild(form.node);
      this.formHost.hidden = false;
    } catch (error) {
      if (request === this.formRequest) {
        this.closeForm();
        this.notice = errorText(error);
        this.render();
      }
    }
  }

  private closeForm(): void {
    this.formRequest++;
    this.formWanted = false;
    this.form?.dispose();
    this.form = null;
    this.formHost.textContent = '';
    this.formHost.hidden = true;
    this.formToggle.textContent = 'New server…';
  }

  /** Follow a launch or renewal until it ends; notify then. */
  private follow(launch: LaunchModel): void {
    const wasDone = this.launches.get(launch.id)?.done ?? false;
    this.launches.set(launch.id, launch);
    if (launch.done && !wasDone) {
      this.announce(launch);
    }
    this.render();
    this.scheduleLaunches();
  }

  private scheduleLaunches(): void {
    window.clearTimeout(this.launchTimer);
    if (!this.readingLaunches && [...this.launches.values()].some(l => !l.done)) {
      this.launchTimer = window.setTimeout(() => void this.readLaunches(), LAUNCH_INTERVAL);
    }
  }

  /** One read of every launch under way (never two at once: each end is announced once). */
  private async readLaunches(): Promise<void> {
    this.readingLaunches = true;
    await Promise.all(
      [...this.launches.values()].filter(l => !l.done).map(async before => {
        let now: LaunchModel;
        try {
          now = await requestAPI<LaunchModel>(`launches/${before.id}`);
        } catch (error) {
          if (!(error instanceof ApiError && error.status === 404)) {
            this.problem = errorText(error); // read again next time
            return;
          }
          now = { ...before, done: true, stage: 'failed', error: errorText(error) };
        }
        const current = this.launches.get(now.id);
        if (!current || current.done) {
          return; // dismissed, or ended by a Cancel's answer, meanwhile: that is newer
        }
        this.launches.set(now.id, now);
        if (now.done) {
          this.announce(now);
        }
      })
    );
    this.readingLaunches = false;
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
      Notification.error(`${launch.model}: ${launch.error}`, { autoClose: false });
    }
  }

  private warnNearWalltime(profile: string): void {
    for (const server of newWarnings(this.servers, this.warned)) {
      this.warned.add(server.job_id);
      Notification.warning(server.walltime_warning ?? '', {
        autoClose: false,
        actions: [{ label: 'Renew', callback: () => void this.renew(profile, server) }]
      });
    }
  }

  /** Run an action once at a time (its button waits meanwhile); say what it did, then read again. */
  private async act(key: string, work: () => Promise<void>): Promise<void> {
    if (this.busy.has(key)) {
      return;
    }
    this.busy.add(key);
    this.notice = '';
    this.render();
    try {
      await work();
    } catch (error) {
      this.notice = errorText(error);
    }
    this.busy.delete(key);
    this.render();
    void this.poll.refresh();
  }

  private stop(profile: string, server: ServerModel): Promise<void> {
    return this.act(`stop:${server.job_id}`, async () => {
      const path = `servers/${server.job_id}${this.query(profile)}`;
      this.notice = (await requestAPI<StoppedModel>(path, { method: 'DELETE' })).message;
    });
  }

  private renew(profile: string, server: ServerModel): Promise<void> {
    if (this.renewing(server.job_id)) {
      return Promise.resolve(); // (a notification's Renew, after the card's)
    }
    return this.act(`renew:${server.job_id}`, async () => {
      const path = `servers/${server.job_id}/renew${this.query(profile)}`;
      const renewal = await requestAPI<LaunchModel>(path, { method: 'POST' });
      this.renewals.set(server.job_id, renewal.id);
      this.follow(renewal);
    });
  }

  private cancel(launch: LaunchModel): Promise<void> {
    return this.act(`cancel:${launch.id}`, async () => {
      this.follow(await requestAPI<LaunchModel>(`launches/${launch.id}`, { method: 'DELETE' }));
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
        this.servers = [];
        this.metrics = new Map();
        this.render();
        if (this.formWanted) {
          void this.openForm(); // the new profile's choices
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

  /** Whether a renewal of this job is under way here (Renew is not offered twice). */
  private renewing(job: string): boolean {
    const id = this.renewals.get(job);
    return id !== undefined && this.launches.get(id)?.done === false;
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
      const cancel = box.appendChild(element('button', 'jp-mod-styled', 'Cancel'));
      cancel.disabled = this.busy.has(`cancel:${launch.id}`);
      cancel.onclick = () => void this.cancel(launch);
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
    const button = (label: string, action: () => void, busy = ''): void => {
      const node = box.appendChild(element('button', 'jp-mod-styled', label));
      node.disabled = this.busy.has(busy);
      node.onclick = action;
    };
    const profile = this.profile;
    button('Stop', () => void this.stop(profile, server), `stop:${server.job_id}`);
    button('Logs', () => this.hooks.openLogs(profile, server));
    if (card.renewable && !this.renewing(server.job_id)) {
      button('Renew', () => void this.renew(profile, server), `renew:${server.job_id}`);
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
