/**
 * The "HPC LLM" sidebar: your servers on a profile, with their state, GPUs, time left, idle time and live
 * metrics; Stop, Logs, and "Insert client code". It polls the server extension while it is shown, backing
 * off while nothing changes, and stands by while hidden.
 */
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { ApiError, requestAPI } from './api';
import { clientCode, fingerprint, nextInterval, serverCard } from './logic';
import type { LogsModel, MetricsModel, ProfilesModel, ServerModel, StoppedModel } from './models';

export const MIN_INTERVAL = 10_000;
export const MAX_INTERVAL = 120_000;

export class HpcllmSidebar extends Widget {
  readonly poll: Poll;
  private profiles: string[] = [];
  private profile = '';
  private servers: ServerModel[] = [];
  private metrics = new Map<string, MetricsModel>();
  private logs = new Map<string, string>();
  private message = '';
  private seen = '';
  private interval = MIN_INTERVAL;

  constructor(private readonly insertCode: (code: string) => boolean) {
    super();
    this.id = 'jp-hpcllm-sidebar';
    this.addClass('jp-hpcllm-sidebar');
    this.title.caption = 'HPC LLM: your model servers on the cluster';
    this.poll = new Poll({
      factory: () => this.refresh(),
      frequency: { interval: MIN_INTERVAL, backoff: true, max: MAX_INTERVAL },
      // Only while the sidebar is shown, and never while the browser tab is hidden.
      standby: () => (this.isVisible ? 'when-hidden' : true),
      name: 'jupyter-hpcllm:servers'
    });
    this.render();
  }

  dispose(): void {
    this.poll.dispose();
    super.dispose();
  }

  /** Read the profiles (once), the servers and their metrics; render. */
  async refresh(): Promise<void> {
    try {
      if (!this.profile) {
        const known = await requestAPI<ProfilesModel>('profiles');
        this.profiles = known.profiles;
        this.profile = known.default;
      }
      const query = `?profile=${encodeURIComponent(this.profile)}`;
      this.servers = await requestAPI<ServerModel[]>(`servers${query}`);
      const running = this.servers.filter(s => s.state === 'RUNNING');
      this.metrics.clear();
      await Promise.all(
        running.map(async s => {
          try {
            this.metrics.set(s.job_id, await requestAPI<MetricsModel>(`servers/${s.job_id}/metrics${query}`));
          } catch {
            // still loading, or an older job: no numbers this time
          }
        })
      );
      this.message = '';
    } catch (error) {
      this.message = error instanceof ApiError ? error.message : String(error);
    }
    const now = fingerprint(this.servers);
    this.interval = nextInterval(this.interval, now !== this.seen, MIN_INTERVAL, MAX_INTERVAL);
    this.seen = now;
    this.poll.frequency = { ...this.poll.frequency, interval: this.interval };
    this.render();
  }

  private async act(job: string, work: () => Promise<void>): Promise<void> {
    try {
      await work();
    } catch (error) {
      this.message = error instanceof ApiError ? error.message : String(error);
    }
    this.render();
    void this.poll.refresh();
    void job;
  }

  private stop(server: ServerModel): Promise<void> {
    return this.act(server.job_id, async () => {
      const stopped = await requestAPI<StoppedModel>(
        `servers/${server.job_id}?profile=${encodeURIComponent(this.profile)}`,
        { method: 'DELETE' }
      );
      this.message = stopped.message;
    });
  }

  private toggleLogs(server: ServerModel): Promise<void> {
    return this.act(server.job_id, async () => {
      if (this.logs.has(server.job_id)) {
        this.logs.delete(server.job_id);
        return;
      }
      const logs = await requestAPI<LogsModel>(
        `servers/${server.job_id}/logs?lines=40&profile=${encodeURIComponent(this.profile)}`
      );
      this.logs.set(server.job_id, logs.text);
    });
  }

  private render(): void {
    const node = this.node;
    node.textContent = '';
    const heading = document.createElement('h2');
    heading.textContent = 'HPC LLM';
    node.appendChild(heading);
    if (this.profiles.length) {
      const select = document.createElement('select');
      select.className = 'jp-hpcllm-profile';
      for (const name of this.profiles) {
        const option = document.createElement('option');
        option.value = option.textContent = name;
        option.selected = name === this.profile;
        select.appendChild(option);
      }
      select.onchange = () => {
        this.profile = select.value;
        this.seen = '';
        void this.poll.refresh();
      };
      node.appendChild(select);
    }
    if (this.message) {
      const message = document.createElement('p');
      message.className = 'jp-hpcllm-message';
      message.textContent = this.message;
      node.appendChild(message);
    }
    if (!this.servers.length) {
      const empty = document.createElement('p');
      empty.className = 'jp-hpcllm-empty';
      empty.textContent = 'No servers of yours on this profile.';
      node.appendChild(empty);
    }
    for (const server of this.servers) {
      node.appendChild(this.renderServer(server));
    }
  }

  private renderServer(server: ServerModel): HTMLElement {
    const card = serverCard(server, this.metrics.get(server.job_id) ?? null);
    const box = document.createElement('div');
    box.className = 'jp-hpcllm-server';
    box.dataset.job = server.job_id;
    const title = document.createElement('div');
    title.className = 'jp-hpcllm-title';
    title.textContent = card.title;
    box.appendChild(title);
    for (const line of card.lines) {
      const fact = document.createElement('div');
      fact.className = 'jp-hpcllm-facts';
      fact.textContent = line;
      box.appendChild(fact);
    }
    if (card.warning) {
      const warning = document.createElement('div');
      warning.className = 'jp-hpcllm-warning';
      warning.textContent = card.warning;
      box.appendChild(warning);
    }
    const button = (label: string, action: () => void): void => {
      const element = document.createElement('button');
      element.className = 'jp-mod-styled';
      element.textContent = label;
      element.onclick = action;
      box.appendChild(element);
    };
    button('Stop', () => void this.stop(server));
    button(this.logs.has(server.job_id) ? 'Hide log' : 'Logs', () => void this.toggleLogs(server));
    if (server.state === 'RUNNING') {
      button('Insert client code', () => {
        if (!this.insertCode(clientCode(server, this.profile))) {
          this.message = 'Open a notebook first: the code goes into the active one.';
          this.render();
        }
      });
    }
    const log = this.logs.get(server.job_id);
    if (log !== undefined) {
      const pre = document.createElement('pre');
      pre.className = 'jp-hpcllm-log';
      pre.textContent = log;
      box.appendChild(pre);
    }
    return box;
  }
}
