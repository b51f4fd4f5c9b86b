/**
 * The front-end end of the kernel comm (protocol in docs/labextension.md, messages in
 * `protocol.ts`): one client per kernel connection. The kernel opens the comm on
 * `%load_ext jupyter_localllm` and sends its state when it changes; nothing here polls. A page
 * opened on a kernel that already holds the comm finds it once with a `comm_info` request.
 * Every message is checked before it is read; one in another protocol version makes the
 * client refuse the kernel (`refusal`), which the status bar and a notification show.
 */

import { Kernel, KernelMessage } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

import {
  Action,
  IAvailableModel,
  IKernelState,
  IReplies,
  IRefusal,
  IRequestFields,
  Replies
} from './protocol';

/** The comm target the kernel opens. */
export const COMM_TARGET = 'jupyter_localllm';

/** How long to wait for the kernel to answer a request (a model load can take a while). */
const REPLY_TIMEOUT_MS = 120_000;

/** The kernel's LocalLLM state and the requests the front-end sends it. */
export class LocalLLMClient {
  constructor(readonly kernel: Kernel.IKernelConnection) {
    kernel.registerCommTarget(COMM_TARGET, (comm, msg) => this._attach(comm, msg.content.data));
    kernel.statusChanged.connect(this._onStatus, this);
    void this._findOpenComm();
  }

  /** The last state the kernel sent; `null` while the kernel has not loaded the extension
   * (or speaks another protocol). */
  get state(): IKernelState | null {
    return this._state;
  }

  /** Emitted when the state changes (also to `null`), and when `refusal` changes. */
  get stateChanged(): ISignal<this, IKernelState | null> {
    return this._stateChanged;
  }

  /** Why this extension cannot talk to the kernel (another protocol version); `null` when
   * it can. Cleared when the comm closes or the kernel restarts. */
  get refusal(): IRefusal | null {
    return this._refusal;
  }

  /** Emitted once when the client starts refusing the kernel. */
  get refused(): ISignal<this, IRefusal> {
    return this._refused;
  }

  /** Emitted with the message of each `error` the kernel sends that no request waits for. */
  get errors(): ISignal<this, string> {
    return this._errors;
  }

  /** Cancel one background job. */
  cancel(jobId: string): void {
    this._send('cancel', { job: jobId });
  }

  /** Cancel every background job and interrupt a foreground run (which keeps its rows). */
  async cancelAll(): Promise<void> {
    this._send('cancel_all', {});
    if (this._state?.jobs.some(j => !j.background && j.status === 'running')) {
      await this.kernel.interrupt();
    }
  }

  /** Stop a foreground run: interrupt the kernel (the run keeps its finished rows). */
  async interrupt(): Promise<void> {
    await this.kernel.interrupt();
  }

  /** The models the kernel can load. */
  async discover(): Promise<IAvailableModel[]> {
    return (await this._request('discover', {})).models;
  }

  /** Load `ref` (as `alias`); resolves with the kernel's message once loaded. */
  async load(ref: string, alias: string | null = null): Promise<string> {
    return (await this._request('load', { ref, alias })).message;
  }

  /** Unload the model under `alias`. */
  async unload(alias: string): Promise<string> {
    return (await this._request('unload', { alias })).message;
  }

  /** Stop listening (the kernel connection is gone). */
  dispose(): void {
    this.kernel.statusChanged.disconnect(this._onStatus, this);
    this._reset();
    Signal.clearData(this);
  }

  private _attach(comm: Kernel.IComm, data?: unknown): void {
    this._comm = comm;
    comm.onMsg = msg => this._onMessage(msg.content.data);
    comm.onClose = () => {
      if (this._comm === comm) {
        this._comm = null;
        this._reset();
      }
    };
    if (data !== undefined) {
      this._onMessage(data);
    }
  }

  /** A page reloaded on a kernel that opened the comm earlier: take that comm over. */
  private async _findOpenComm(): Promise<void> {
    let reply: KernelMessage.ICommInfoReplyMsg;
    try {
      reply = await this.kernel.requestCommInfo({ target_name: COMM_TARGET });
    } catch {
      return; // no kernel yet or it went away; its comm_open will come if it loads us
    }
    if (reply.content.status !== 'ok' || this._comm !== null) {
      return;
    }
    const ids = Object.keys(reply.content.comms);
    if (ids.length > 0 && !this.kernel.hasComm(ids[0])) {
      this._attach(this.kernel.createComm(COMM_TARGET, ids[0]));
      this._send('state', {});
    }
  }

  private _onMessage(data: unknown): void {
    const got = this._replies.receive(data);
    if (got.kind === 'refused') {
      this._refuse(got.refusal);
    } else if (got.kind === 'malformed') {
      console.warn('jupyter-localllm: ignored a kernel message this extension cannot read', data);
    } else if (got.message.type === 'state') {
      this._setState(got.message);
    } else if (got.message.type === 'error' && !got.answered) {
      this._errors.emit(got.message.message);
    }
  }

  private _request<A extends Action>(action: A, fields: IRequestFields[A]): Promise<IReplies[A]> {
    const problem = this._comm === null ? this._notLoaded() : (this._refusal?.message ?? null);
    if (problem !== null) {
      return Promise.reject(new Error(problem));
    }
    const { message, reply } = this._replies.request(action, fields, true);
    const timer = setTimeout(
      () => this._replies.abandon(message.request_id, new Error(TIMEOUT)),
      REPLY_TIMEOUT_MS
    );
    void reply?.finally(() => clearTimeout(timer)).catch(() => undefined);
    this._comm?.send({ ...message });
    return reply ?? Promise.reject(new Error(TIMEOUT));
  }

  /** Send a request no one waits on (its `error`, if any, goes to `errors`). */
  private _send<A extends Action>(action: A, fields: IRequestFields[A]): void {
    if (this._comm !== null && !this._comm.isDisposed && this._refusal === null) {
      this._comm.send({ ...this._replies.request(action, fields, false).message });
    }
  }

  private _notLoaded(): string {
    return 'The kernel has not loaded jupyter_localllm; run %load_ext jupyter_localllm.';
  }

  private _refuse(refusal: IRefusal): void {
    const first = this._refusal === null;
    this._refusal = refusal;
    this._state = null;
    this._stateChanged.emit(null);
    if (first) {
      console.error(`jupyter-localllm: ${refusal.message}`);
      this._refused.emit(refusal);
    }
  }

  private _setState(state: IKernelState | null): void {
    if (state !== this._state) {
      this._state = state;
      this._stateChanged.emit(state);
    }
  }

  /** The comm or the kernel is gone: no state, no refusal, no request waits. */
  private _reset(): void {
    this._replies.rejectAll(new Error('The kernel closed the jupyter_localllm comm.'));
    const had = this._refusal !== null;
    this._refusal = null;
    if (had && this._state === null) {
      this._stateChanged.emit(null);
    }
    this._setState(null);
  }

  private _onStatus(_: Kernel.IKernelConnection, status: KernelMessage.Status): void {
    if (status === 'restarting' || status === 'autorestarting' || status === 'dead') {
      this._comm = null;
      this._reset();
    }
  }

  private _comm: Kernel.IComm | null = null;
  private _state: IKernelState | null = null;
  private _refusal: IRefusal | null = null;
  private _replies = new Replies();
  private _stateChanged = new Signal<this, IKernelState | null>(this);
  private _refused = new Signal<this, IRefusal>(this);
  private _errors = new Signal<this, string>(this);
}

const TIMEOUT = 'The kernel did not answer; is it busy running a cell?';
