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

  private async act(work: () => Promise<void>): Promise<void> {
    try {
      await work();
    } catch (error) {
      this.message = error instanceof ApiError ? error.message : String(error);
    }
    this.render();
    void this.poll.refresh();
  }

  private stop(server: ServerModel): Promise<void> {
    return this.act(async () => {
      const stopped = await requestAPI<StoppedModel>(
        `servers/${server.job_id}?profile=${encodeURIComponent(this.profile)}`,
        { method: 'DELETE' }
      );
      this.message = stopped.message;
    });
  }

  private toggleLogs(server: ServerModel): Promise<void> {
    return this.act(async () => {
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
    node.appendChild(element('h2', '', 'HPC LLM'));
    if (this.profiles.length) {
      const select = element('select', 'jp-hpcllm-profile');
      for (const name of this.profiles) {
        const option = select.appendChild(element('option', '', name));
        option.value = name;
        option.selected = name === this.profile;
      }
      select.onchange = () => {
        this.profile = select.value;
        this.seen = '';
        void this.poll.refresh();
      };
      node.appendChild(select);
    }
    if (this.message) {
      node.appendChild(element('p', 'jp-hpcllm-message', this.message));
    }
    if (!this.servers.length) {
      node.appendChild(element('p', 'jp-hpcllm-empty', 'No servers of yours on this profile.'));
    }
    for (const server of this.servers) {
      node.appendChild(this.renderServer(server));
    }
  }

  private renderServer(server: ServerModel): HTMLElement {
    const card = serverCard(server, this.metrics.get(server.job_id) ?? null);
    const box = element('div', 'jp-hpcllm-server');
    box.dataset.job = server.job_id;
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
      box.appendChild(element('pre', 'jp-hpcllm-log', log));
    }
    return box;
  }
}

/** A new element of the sidebar, with its class and text. */
function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  node.textContent = text;
  return node;
}
