/**
 * The comm's messages (docs/labextension.md; their one description is the JSON schema
 * `jupyter_localllm/notebook/comm_schema.json`, which `test/protocol.test.ts` holds these
 * types and guards to): what the kernel sends, what the front-end asks, the type guards that
 * check each incoming message before anything reads it, and the bookkeeping that pairs a reply
 * with its request by `request_id`. Pure: no JupyterLab imports.
 */

/** The protocol version this extension speaks (the schema's `protocol` constant). */
export const PROTOCOL = 2;

/** A model the kernel holds. */
export interface IModelInfo {
  alias: string;
  /** The model's own name (GGUF metadata). */
  name: string;
  /** Its file's name. */
  file: string;
  size_mb: number;
  n_ctx: number | null;
  default: boolean;
}

/** How a run stands. */
export type JobStatus = 'queued' | 'running' | 'finished' | 'failed' | 'cancelled';

/** A run the kernel is doing (or ended less than 30 s ago). */
export interface IJobInfo {
  id: string;
  desc: string;
  model: string | null;
  status: JobStatus;
  background: boolean;
  done: number;
  total: number;
  errors: number;
  tokens_per_s: number;
  eta_s: number | null;
}

/** Fields every kernel message has. */
interface IKernelMessageBase {
  protocol: typeof PROTOCOL;
  /** The request this message answers; `null` when none (a pushed state). */
  request_id: string | null;
}

/** The `state` message: the kernel's whole state. */
export interface IKernelState extends IKernelMessageBase {
  type: 'state';
  models: IModelInfo[];
  jobs: IJobInfo[];
}

/** A model the kernel can load (`models_available`). */
export interface IAvailableModel {
  ref: string;
  source: string;
  size_mb: number;
  path: string;
}

/** The reply to `discover`. */
export interface IModelsAvailable extends IKernelMessageBase {
  type: 'models_available';
  models: IAvailableModel[];
}

/** The actions the front-end may request. */
export const ACTIONS = ['state', 'cancel', 'cancel_all', 'discover', 'load', 'unload'] as const;

/** One of {@link ACTIONS}. */
export type Action = (typeof ACTIONS)[number];

/** A request succeeded. */
export interface IDone extends IKernelMessageBase {
  type: 'done';
  action: 'cancel' | 'cancel_all' | 'load' | 'unload';
  message: string;
}

/** A request failed or was malformed. */
export interface IError extends IKernelMessageBase {
  type: 'error';
  action: Action | null;
  message: string;
}

/** Anything the kernel sends. */
export type KernelMessage = IKernelState | IModelsAvailable | IDone | IError;

/** What each request is answered by (besides `error`). */
export interface IReplies {
  state: IKernelState;
  cancel: IDone;
  cancel_all: IDone;
  discover: IModelsAvailable;
  load: IDone;
  unload: IDone;
}

/** The fields of each request besides `action`, `protocol` and `request_id`. */
export interface IRequestFields {
  state: Record<string, never>;
  cancel: { job: string };
  cancel_all: Record<string, never>;
  discover: Record<string, never>;
  load: { ref: string; alias?: string | null };
  unload: { alias: string };
}

/** A request as sent. */
export type Request<A extends Action = Action> = {
  action: A;
  protocol: typeof PROTOCOL;
  request_id: string;
} & IRequestFields[A];

// -- type guards ---------------------------------------------------------------------------------
type Obj = Record<string, unknown>;

function isObject(x: unknown): x is Obj {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

/** `x` has exactly the keys `keys` (the schema's `additionalProperties: false`). */
function hasKeys(x: Obj, keys: readonly string[]): boolean {
  const own = Object.keys(x);
  return own.length === keys.length && keys.every(k => Object.prototype.hasOwnProperty.call(x, k));
}

const isString = (x: unknown): x is string => typeof x === 'string';
/** A string's length as JSON Schema (and Python) counts it: in code points, not UTF-16 units. */
const chars = (x: string): number => [...x].length;
const isNumber = (x: unknown, min = -Infinity): x is number =>
  typeof x === 'number' && Number.isFinite(x) && x >= min;
const isCount = (x: unknown): x is number => isNumber(x, 0) && Number.isInteger(x);
const isOrNull =
  <T>(guard: (x: unknown) => x is T) =>
  (x: unknown): x is T | null =>
    x === null || guard(x);

/** A `request_id` as the schema allows it. */
export function isRequestId(x: unknown): x is string {
  return isString(x) && x.length >= 1 && chars(x) <= 64;
}

const STATUSES: readonly string[] = ['queued', 'running', 'finished', 'failed', 'cancelled'];
const DONE_ACTIONS: readonly string[] = ['cancel', 'cancel_all', 'load', 'unload'];
const MODEL_KEYS = ['alias', 'name', 'file', 'size_mb', 'n_ctx', 'default'];
const JOB_KEYS = [
  'id', 'desc', 'model', 'status', 'background', 'done', 'total', 'errors', 'tokens_per_s', 'eta_s'
];
const AVAILABLE_KEYS = ['ref', 'source', 'size_mb', 'path'];

/** A model entry of a state. */
export function isModelInfo(x: unknown): x is IModelInfo {
  return (
    isObject(x) &&
    hasKeys(x, MODEL_KEYS) &&
    isString(x.alias) &&
    isString(x.name) &&
    chars(x.name) <= 256 &&
    isString(x.file) &&
    isNumber(x.size_mb, 0) &&
    isOrNull(isCount)(x.n_ctx) &&
    typeof x.default === 'boolean'
  );
}

/** A job entry of a state. */
export function isJobInfo(x: unknown): x is IJobInfo {
  return (
    isObject(x) &&
    hasKeys(x, JOB_KEYS) &&
    isString(x.id) &&
    x.id.length >= 1 &&
    isString(x.desc) &&
    isOrNull(isString)(x.model) &&
    isString(x.status) &&
    STATUSES.includes(x.status) &&
    typeof x.background === 'boolean' &&
    isCount(x.done) &&
    isCount(x.total) &&
    isCount(x.errors) &&
    isNumber(x.tokens_per_s, 0) &&
    isOrNull((v: unknown): v is number => isNumber(v, 0))(x.eta_s)
  );
}

function isAvailableModel(x: unknown): x is IAvailableModel {
  return (
    isObject(x) &&
    hasKeys(x, AVAILABLE_KEYS) &&
    isString(x.ref) &&
    isString(x.source) &&
    isNumber(x.size_mb, 0) &&
    isString(x.path)
  );
}

function isArrayOf<T>(x: unknown, guard: (item: unknown) => item is T): x is T[] {
  return Array.isArray(x) && x.every(item => guard(item));
}

/** The fields every kernel message has, right (the protocol checked by {@link checkProtocol}). */
function isBase(x: Obj, type: string, keys: readonly string[]): boolean {
  return (
    x.type === type &&
    x.protocol === PROTOCOL &&
    hasKeys(x, ['type', 'protocol', 'request_id', ...keys]) &&
    isOrNull(isRequestId)(x.request_id)
  );
}

/** Whether `x` is a message the kernel may send, in this protocol's shape. */
export function isKernelMessage(x: unknown): x is KernelMessage {
  if (!isObject(x)) {
    return false;
  }
  switch (x.type) {
    case 'state':
      return (
        isBase(x, 'state', ['models', 'jobs']) &&
        isArrayOf(x.models, isModelInfo) &&
        isArrayOf(x.jobs, isJobInfo)
      );
    case 'models_available':
      return isBase(x, 'models_available', ['models']) && isArrayOf(x.models, isAvailableModel);
    case 'done':
      return (
        isBase(x, 'done', ['action', 'message']) &&
        isString(x.action) &&
        DONE_ACTIONS.includes(x.action) &&
        isString(x.message)
      );
    case 'error':
      return (
        isBase(x, 'error', ['action', 'message']) &&
        (x.action === null || ACTIONS.some(a => a === x.action)) &&
        isString(x.message) &&
        x.message.length >= 1 &&
        chars(x.message) <= 2000
      );
    default:
      return false;
  }
}

// -- the version ----------------------------------------------------------------------------------
/** Why this extension refuses a kernel: the version it speaks and the sentence to show. */
export interface IRefusal {
  /** The kernel's `protocol`, as text (`'none'` when its message had none). */
  kernelProtocol: string;
  message: string;
}

/** The refusal for a message from the kernel whose `protocol` is not {@link PROTOCOL}
 * (missing counts); `null` when it is this one. */
export function protocolProblem(data: unknown): IRefusal | null {
  const theirs = isObject(data) ? data.protocol : undefined;
  if (theirs === PROTOCOL) {
    return null;
  }
  const kernelProtocol =
    typeof theirs === 'number' || typeof theirs === 'string' ? String(theirs).slice(0, 20) : 'none';
  const named = kernelProtocol === 'none' ? 'no protocol version' : `protocol ${kernelProtocol}`;
  const message =
    `The kernel's jupyter-localllm speaks ${named} and this JupyterLab extension ` +
    `protocol ${PROTOCOL}: install the same jupyter-localllm version in the kernel's ` +
    'environment and JupyterLab\u2019s, then restart the kernel and reload the page.';
  return { kernelProtocol, message };
}

// -- requests and their replies -----------------------------------------------------------------
/** What became of a message from the kernel (see {@link Replies.receive}). */
export type Received =
  | { kind: 'refused'; refusal: IRefusal }
  | { kind: 'malformed'; data: unknown }
  | { kind: 'message'; message: KernelMessage; answered: boolean };

/** For each action, whether a message is the kind that answers it (besides `error`). */
const ANSWERS: { [A in Action]: (m: KernelMessage) => m is IReplies[A] } = {
  state: (m): m is IKernelState => m.type === 'state',
  cancel: (m): m is IDone => m.type === 'done' && m.action === 'cancel',
  cancel_all: (m): m is IDone => m.type === 'done' && m.action === 'cancel_all',
  discover: (m): m is IModelsAvailable => m.type === 'models_available',
  load: (m): m is IDone => m.type === 'done' && m.action === 'load',
  unload: (m): m is IDone => m.type === 'done' && m.action === 'unload'
};

interface IWaiter {
  action: Action;
  /** Resolve with `reply` when it is the kind that answers the request; false when not. */
  accept: (reply: KernelMessage) => boolean;
  reject: (error: Error) => void;
}

/** The requests waiting for their replies, matched by `request_id` alone. */
export class Replies {
  /** A new request: its message (with a fresh `request_id`) and, when `wait`, the promise of
   * its reply (rejected by an `error` reply or by {@link rejectAll}). */
  request<A extends Action>(
    action: A,
    fields: IRequestFields[A],
    wait: boolean
  ): { message: Request<A>; reply: Promise<IReplies[A]> | null } {
    const requestId = `${this._prefix}${++this._count}`;
    const message: Request<A> = { ...fields, action, protocol: PROTOCOL, request_id: requestId };
    if (!wait) {
      return { message, reply: null };
    }
    const reply = new Promise<IReplies[A]>((resolve, reject) => {
      const answers: (m: KernelMessage) => m is IReplies[A] = ANSWERS[action];
      const accept = (answer: KernelMessage): boolean => answers(answer) && (resolve(answer), true);
      this._waiting.set(requestId, { action, accept, reject });
    });
    return { message, reply };
  }

  /** Forget request `requestId`, rejecting its promise with `error`. */
  abandon(requestId: string, error: Error): void {
    this._waiting.get(requestId)?.reject(error);
    this._waiting.delete(requestId);
  }

  /** Reject every waiting request (the comm closed, the versions differ). */
  rejectAll(error: Error): void {
    for (const waiter of this._waiting.values()) {
      waiter.reject(error);
    }
    this._waiting.clear();
  }

  /** How many requests wait for a reply. */
  get pending(): number {
    return this._waiting.size;
  }

  /** Read one message from the kernel: refuse another protocol, drop a malformed message
   * (rejecting the request it names), else settle the request whose `request_id` it echoes
   * (`answered`) and return it. */
  receive(data: unknown): Received {
    const refusal = isObject(data) ? protocolProblem(data) : null; // else merely malformed
    if (refusal !== null) {
      this.rejectAll(new Error(refusal.message));
      return { kind: 'refused', refusal };
    }
    if (!isKernelMessage(data)) {
      const id = isObject(data) ? data.request_id : undefined;
      if (isRequestId(id)) {
        this.abandon(id, new Error('The kernel sent a reply this extension cannot read.'));
      }
      return { kind: 'malformed', data };
    }
    const waiter = data.request_id === null ? undefined : this._waiting.get(data.request_id);
    if (waiter === undefined || data.request_id === null) {
      return { kind: 'message', message: data, answered: false };
    }
    this._waiting.delete(data.request_id);
    if (data.type === 'error') {
      waiter.reject(new Error(data.message));
    } else if (!waiter.accept(data)) {
      waiter.reject(new Error(`The kernel answered ${waiter.action} with ${data.type}.`));
    }
    return { kind: 'message', message: data, answered: true };
  }

  // Ids differ between clients and page loads, so a reply never settles another's request.
  private _prefix = `${Math.random().toString(36).slice(2, 8)}-`;
  private _count = 0;
  private _waiting = new Map<string, IWaiter>();
}
