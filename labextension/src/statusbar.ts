/**
 * The status bar item: the model server the current notebook's kernel talks to (model, job, time left).
 * It asks the kernel silently (user_expressions; nothing is imported there that was not) when the
 * notebook or its kernel changes, after each cell run, and every minute while a server is attached.
 */
import type { INotebookTracker } from '@jupyterlab/notebook';
import type { Kernel, KernelMessage } from '@jupyterlab/services';
import { Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { ATTACHED_EXPRESSION, parseAttached, statusText, type AttachedModel } from './logic';

export const STATUS_INTERVAL = 60_000;

export class KernelServerStatus extends Widget {
  /** Emitted when the notebook's server (or the lack of one) may have changed: the status bar shows or hides. */
  readonly activeChanged = new Signal<this, void>(this);
  private attached: AttachedModel | null = null;
  private askedAt = 0;
  private kernel: Kernel.IKernelConnection | null = null;
  private readonly timer: number;
  private asking = 0;
  private cellRan = false;

  constructor(private readonly notebooks: INotebookTracker) {
    super();
    this.addClass('jp-hpcllm-status');
    this.node.title = 'The LLM server this notebook talks to (jupyter-hpcllm)';
    notebooks.currentChanged.connect(this.follow, this);
    this.follow();
    // Every minute: the time left counts down here; the kernel is asked again (a renewal may have moved
    // it) only while it has a server and the page is seen. A silent request is kernel activity: asking an
    // idle kernel with nothing attached, or in a hidden tab, would keep Jupyter's culler from ending it.
    this.timer = window.setInterval(() => {
      if (this.attached && !document.hidden) {
        void this.ask();
      } else {
        this.render();
      }
    }, STATUS_INTERVAL);
  }

  get active(): boolean {
    return this.attached !== null;
  }

  dispose(): void {
    window.clearInterval(this.timer);
    this.notebooks.currentChanged.disconnect(this.follow, this);
    this.kernel?.statusChanged.disconnect(this.kernelStatus, this);
    this.kernel?.iopubMessage.disconnect(this.kernelMessage, this);
    Signal.clearData(this);
    super.dispose();
  }

  /** The current notebook's kernel (and again when it restarts or changes). */
  private follow(): void {
    const context = this.notebooks.currentWidget?.sessionContext;
    context?.kernelChanged.disconnect(this.follow, this);
    context?.kernelChanged.connect(this.follow, this);
    this.kernel?.statusChanged.disconnect(this.kernelStatus, this);
    this.kernel?.iopubMessage.disconnect(this.kernelMessage, this);
    this.kernel = context?.session?.kernel ?? null;
    this.kernel?.statusChanged.connect(this.kernelStatus, this);
    this.kernel?.iopubMessage.connect(this.kernelMessage, this);
    void this.ask();
  }

  /** A cell ran (its execute_input; a silent request, such as this item's own, has none). */
  private kernelMessage(_: Kernel.IKernelConnection, message: KernelMessage.IIOPubMessage): void {
    if (message.header.msg_type === 'execute_input') {
      this.cellRan = true;
    }
  }

  /** Idle after a cell ran: ask (never after this item's own request, which would ask forever). */
  private kernelStatus(_: Kernel.IKernelConnection, status: Kernel.Status): void {
    if (status === 'idle' && this.cellRan) {
      this.cellRan = false;
      void this.ask();
    }
  }

  /** Ask the kernel, when it is idle (never queue behind a running cell). */
  async ask(): Promise<void> {
    const kernel = this.kernel;
    const asked = ++this.asking;
    let found: AttachedModel | null = null;
    if (kernel && kernel.status === 'idle') {
      try {
        const reply = await kernel.requestExecute({
          code: '',
          silent: true,
          store_history: false,
          user_expressions: { hpcllm: ATTACHED_EXPRESSION }
        }).done;
        const content = reply.content as { status: string; user_expressions?: Record<string, any> };
        const answer = content.user_expressions?.hpcllm;
        found = answer?.status === 'ok' ? parseAttached(answer.data?.['text/plain']) : null;
      } catch {
        found = null; // the kernel went away, or is not Python
      }
    } else if (kernel && this.attached) {
      found = this.attached; // busy: keep what it said
    }
    if (asked !== this.asking) {
      return;
    }
    if (found !== this.attached) {
      this.askedAt = Date.now();
    }
    this.attached = found;
    this.render();
  }

  private render(): void {
    const since = (Date.now() - this.askedAt) / 1000;
    this.node.textContent = this.attached ? `HPC LLM: ${statusText(this.attached, since)}` : '';
    this.activeChanged.emit();
  }
}
