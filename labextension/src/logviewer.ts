/**
 * A job's engine log in the main area, following it: read again every few seconds while shown (standing
 * by while hidden), kept at the bottom unless the reader scrolled up. The log is redacted on the node.
 */
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { ApiError, requestAPI } from './api';
import { element } from './dom';
import type { LogsModel } from './models';

export const LOG_LINES = 500;
export const LOG_INTERVAL = 3_000;

export class LogViewer extends Widget {
  readonly poll: Poll;
  private readonly text = element('pre', 'jp-hpcllm-logtext');
  private readonly status = element('div', 'jp-hpcllm-facts');

  constructor(
    readonly profile: string,
    readonly job: string,
    model: string | null
  ) {
    super();
    this.id = `jp-hpcllm-log-${profile}-${job}`.replace(/[^A-Za-z0-9_-]/g, '_');
    this.addClass('jp-hpcllm-logviewer');
    this.title.label = `Log: job ${job}`;
    this.title.caption = `The engine log of job ${job}${model ? ` (${model})` : ''}, following`;
    this.title.closable = true;
    this.node.append(this.status, this.text);
    this.poll = new Poll({
      factory: () => this.read(),
      frequency: { interval: LOG_INTERVAL, backoff: false },
      standby: () => (this.isVisible ? 'when-hidden' : true),
      name: `jupyter-hpcllm:log-${job}`
    });
  }

  dispose(): void {
    this.poll.dispose();
    super.dispose();
  }

  async read(): Promise<void> {
    const query = `?lines=${LOG_LINES}&profile=${encodeURIComponent(this.profile)}`;
    const following = this.node.scrollTop + this.node.clientHeight >= this.node.scrollHeight - 8;
    try {
      const logs = await requestAPI<LogsModel>(`servers/${this.job}/logs${query}`);
      this.text.textContent = logs.text || '(nothing logged yet)';
      this.status.textContent = `Last ${LOG_LINES} lines, read at ${new Date().toLocaleTimeString()}.`;
    } catch (error) {
      this.status.textContent = error instanceof ApiError ? error.message : String(error);
    }
    if (following) {
      this.node.scrollTop = this.node.scrollHeight;
    }
  }
}
