/**
 * The status-bar item (`🦙 SmolLM2-135M-Instruct · 812/2,000 rows · 96 tok/s`) for the current
 * notebook's kernel, and the popup it opens: the kernel's models and runs, a Cancel button
 * per run and one for all. When the kernel speaks another protocol version, the item says so
 * (and the popup says what to do) instead.
 */

import { Popup, showPopup } from '@jupyterlab/statusbar';
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { LocalLLMClient } from './kernel';
import { IKernelState } from './protocol';
import {
  isActive,
  jobLine,
  jobModelName,
  modelName,
  refusalText,
  statusText,
  statusTitle
} from './status';

/** The status-bar item: shows the client it is given, hidden while that has no state. */
export class LocalLLMStatus extends Widget {
  constructor() {
    super({ node: document.createElement('div') });
    this.addClass('jp-LocalLLM-status');
    this.node.setAttribute('role', 'button');
    this.node.tabIndex = 0;
    this.node.addEventListener('click', () => this.togglePopup());
    this.node.addEventListener('keydown', event => {
      if (event.key === 'Enter' || event.key === ' ') {
        this.togglePopup();
      }
    });
  }

  /** The client shown (the current notebook's kernel), or `null`. */
  get client(): LocalLLMClient | null {
    return this._client;
  }

  set client(client: LocalLLMClient | null) {
    if (client === this._client) {
      return;
    }
    this._client?.stateChanged.disconnect(this._render, this);
    this._client = client;
    client?.stateChanged.connect(this._render, this);
    this._render();
  }

  /** Whether the status bar should show the item. */
  get shown(): boolean {
    return this._enabled && (this._client?.state != null || this._client?.refusal != null);
  }

  /** Turn the item off and on (the `statusBar` setting). */
  set enabled(value: boolean) {
    this._enabled = value;
    this._render();
  }

  /** Emitted when `shown` may have changed. */
  get shownChanged(): ISignal<this, void> {
    return this._shownChanged;
  }

  /** Open the popup with the runs, or close it when open. */
  togglePopup(): void {
    if (this._popup !== null && !this._popup.isDisposed) {
      this._popup.dispose();
      return;
    }
    if (this._client === null) {
      return;
    }
    this._panel = new JobsPanel(this._client);
    this._popup = showPopup({ body: this._panel, anchor: this, align: 'left', hasDynamicSize: true });
    this._popup.disposed.connect(() => {
      this._panel?.dispose();
      this._panel = null;
      this._popup = null;
    });
  }

  private _render(): void {
    const state = this._client?.state ?? null;
    const refusal = this._client?.refusal ?? null;
    this.node.textContent = refusal ? refusalText(refusal) : (statusText(state) ?? '');
    this.node.title = refusal ? refusal.message : statusTitle(state);
    const running = state?.jobs.some(j => j.status === 'running') ?? false;
    this.node.classList.toggle('jp-LocalLLM-busy', running);
    this.node.classList.toggle('jp-LocalLLM-refused', refusal !== null);
    if (state === null && refusal === null) {
      this._popup?.dispose();
    }
    this._shownChanged.emit();
  }

  private _client: LocalLLMClient | null = null;
  private _enabled = true;
  private _popup: Popup | null = null;
  private _panel: JobsPanel | null = null;
  private _shownChanged = new Signal<this, void>(this);
}

/** The popup's body: models, runs (with Cancel) and Cancel all; redrawn on each state. */
export class JobsPanel extends Widget {
  constructor(private readonly _client: LocalLLMClient) {
    super();
    this.addClass('jp-LocalLLM-popup');
    _client.stateChanged.connect(this._render, this);
    this._render();
  }

  dispose(): void {
    if (!this.isDisposed) {
      this._client.stateChanged.disconnect(this._render, this);
    }
    super.dispose();
  }

  private _render(): void {
    const state = this._client.state;
    this.node.replaceChildren();
    const refusal = this._client.refusal;
    if (refusal !== null) {
      this.node.append(heading('Protocol mismatch'), note(refusal.message));
    }
    if (state === null) {
      return;
    }
    this.node.append(heading('Models'), modelList(state), heading('Jobs'));
    const jobs = state.jobs;
    if (jobs.length === 0) {
      this.node.append(note('No job is running.'));
    }
    for (const job of jobs) {
      const row = document.createElement('div');
      row.className = `jp-LocalLLM-job jp-LocalLLM-job-${job.status}`;
      row.dataset.jobId = job.id;
      const text = document.createElement('span');
      text.className = 'jp-LocalLLM-jobText';
      text.textContent = `${jobModelName(state, job)} · ${jobLine(job)}`;
      row.append(progressBar(job.done, job.total), text);
      if (isActive(job)) {
        row.append(
          button(job.background ? 'Cancel' : 'Interrupt', `Stop ${job.desc}; finished rows stay`, () =>
            job.background ? this._client.cancel(job.id) : void this._client.interrupt()
          )
        );
      }
      this.node.append(row);
    }
    if (jobs.filter(isActive).length > 1) {
      this.node.append(
        button('Cancel all', 'Stop every run; finished rows stay', () => void this._client.cancelAll())
      );
    }
  }
}

function heading(text: string): HTMLElement {
  const h = document.createElement('div');
  h.className = 'jp-LocalLLM-heading';
  h.textContent = text;
  return h;
}

function note(text: string): HTMLElement {
  const p = document.createElement('div');
  p.className = 'jp-LocalLLM-note';
  p.textContent = text;
  return p;
}

function modelList(state: IKernelState): HTMLElement {
  if (state.models.length === 0) {
    return note('None loaded: LocalLLM › Load model…, or %llm load default.');
  }
  const list = document.createElement('div');
  for (const m of state.models) {
    const row = document.createElement('div');
    row.className = 'jp-LocalLLM-model';
    const ctx = m.n_ctx === null ? 'n_ctx auto' : `n_ctx ${m.n_ctx}`;
    const star = m.default && state.models.length > 1 ? ' (the default)' : '';
    row.textContent = `${m.alias}${star}: ${modelName(m)}, ${Math.round(m.size_mb)} MB, ${ctx}`;
    list.append(row);
  }
  return list;
}

function progressBar(done: number, total: number): HTMLElement {
  const bar = document.createElement('progress');
  bar.className = 'jp-LocalLLM-progress';
  bar.max = Math.max(total, 1);
  bar.value = Math.min(done, bar.max);
  return bar;
}

function button(label: string, title: string, onClick: () => void): HTMLButtonElement {
  const b = document.createElement('button');
  b.className = 'jp-Button jp-mod-styled jp-mod-warn jp-LocalLLM-cancel';
  b.textContent = label;
  b.title = title;
  b.addEventListener('click', event => {
    event.stopPropagation();
    b.disabled = true;
    onClick();
  });
  return b;
}
