/**
 * The front-end end of the kernel comm (protocol in docs/labextension.md): one client per
 * kernel connection. The kernel opens the comm on `%load_ext jupyter_localllm` and sends its
 * state when it changes; nothing here polls. A page opened on a kernel that already holds
 * the comm finds it once with a `comm_info` request.
 */

import { Kernel, KernelMessage } from '@jupyterlab/services';
import { PromiseDelegate } from '@lumino/coreutils';
import { ISignal, Signal } from '@lumino/signaling';

import { IAvailableModel, IKernelState } from './status';

/** The comm target the kernel opens. */
export const COMM_TARGET = 'jupyter_localllm';

/** How long to wait for the kernel to answer a request (a model load can take a while). */
const REPLY_TIMEOUT_MS = 120_000;

type Reply = {
  type: string;
  action?: string | null;
  message?: string;
  models?: IAvailableModel[];
};

/** The kernel's LocalLLM state and the requests the front-end sends it. */
export class LocalLLMClient {
  constructor(readonly kernel: Kernel.IKernelConnection) {
    kernel.registerCommTarget(COMM_TARGET, (comm, msg) => this._attach(comm, msg.content.data));
    kernel.statusChanged.connect(this._onStatus, this);
    void this._findOpenComm();
  }

  /** The last state the kernel sent; `null` while the kernel has not loaded the extension. */
  get state(): IKernelState | null {
    return this._state;
  }

  /** Emitted when the state changes (also to `null`). */
  get stateChanged(): ISignal<this, IKernelState | null> {
    return this._stateChanged;
  }

  /** Emitted with the message of each `error` the kernel sends. */
  get errors(): ISignal<this, string> {
    return this._errors;
  }

  /** Cancel one background job. */
  cancel(jobId: string): void {
    this._send({ action: 'cancel', job: jobId });
  }

  /** Cancel every background job and interrupt a foreground run (which keeps its rows). */
  async cancelAll(): Promise<void> {
    this._send({ action: 'cancel_all' });
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
    const reply = await this._request({ action: 'discover' }, 'models_available');
    return reply.models ?? [];
  }

  /** Load `ref` (as `alias`); resolves with the kernel's message once loaded. */
  async load(ref: string, alias: string | null = null): Promise<string> {
    const reply = await this._request({ action: 'load', ref, alias }, 'done', 'load');
    return reply.message ?? '';
  }

  /** Unload the model under `alias`. */
  async unload(alias: string): Promise<string> {
    const reply = await this._request({ action: 'unload', alias }, 'done', 'unload');
    return reply.message ?? '';
  }

  /** Stop listening (the kernel connection is gone). */
  dispose(): void {
    this.kernel.statusChanged.disconnect(this._onStatus, this);
    this._setState(null);
    Signal.clearData(this);
  }

  private _attach(comm: Kernel.IComm, data?: unknown): void {
    this._comm = comm;
    comm.onMsg = msg => this._onMessage(msg.content.data as unknown as Reply);
    comm.onClose = () => {
      if (this._comm === comm) {
        this._comm = null;
        this._setState(null);
      }
    };
    if (data !== undefined) {
      this._onMessage(data as Reply);
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
      this._send({ action: 'state' });
    }
  }

  private _onMessage(data: Reply | IKernelState): void {
    if (data.type === 'state') {
      this._setState(data as IKernelState);
      return;
    }
    const reply = data as Reply;
    // A reply names the action it answers (`models_available` answers `discover`).
    const answers = (w: { type: string; action: string }) =>
      (reply.type === 'error' || reply.type === w.type) &&
      (reply.action === undefined || reply.action === null || reply.action === w.action);
    const waiter = this._waiters.find(answers);
    if (waiter !== undefined) {
      this._waiters.splice(this._waiters.indexOf(waiter), 1);
      if (reply.type === 'error') {
        waiter.promise.reject(new Error(reply.message ?? 'The kernel refused the request.'));
      } else {
        waiter.promise.resolve(reply);
      }
    } else if (reply.type === 'error') {
      this._errors.emit(reply.message ?? 'The kernel reported an error.');
    }
  }

  private _request(
    message: Record<string, unknown>,
    type: string,
    action?: string
  ): Promise<Reply> {
    if (this._comm === null) {
      return Promise.reject(
        new Error('The kernel has not loaded jupyter_localllm; run %load_ext jupyter_localllm.')
      );
    }
    const promise = new PromiseDelegate<Reply>();
    const waiter = { type, action: action ?? (message.action as string), promise };
    this._waiters.push(waiter);
    const timer = setTimeout(() => {
      const at = this._waiters.indexOf(waiter);
      if (at >= 0) {
        this._waiters.splice(at, 1);
        promise.reject(new Error('The kernel did not answer; is it busy running a cell?'));
      }
    }, REPLY_TIMEOUT_MS);
    void promise.promise.finally(() => clearTimeout(timer)).catch(() => undefined);
    this._send(message);
    return promise.promise;
  }

  private _send(message: Record<string, unknown>): void {
    if (this._comm !== null && !this._comm.isDisposed) {
      this._comm.send(message as any);
    }
  }

  private _setState(state: IKernelState | null): void {
    if (state !== this._state) {
      this._state = state;
      this._stateChanged.emit(state);
    }
  }

  private _onStatus(_: Kernel.IKernelConnection, status: KernelMessage.Status): void {
    if (status === 'restarting' || status === 'autorestarting' || status === 'dead') {
      this._comm = null;
      this._setState(null);
    }
  }

  private _comm: Kernel.IComm | null = null;
  private _state: IKernelState | null = null;
  private _stateChanged = new Signal<this, IKernelState | null>(this);
  private _errors = new Signal<this, string>(this);
  private _waiters: Array<{ type: string; action: string; promise: PromiseDelegate<Reply> }> =
    [];
}
