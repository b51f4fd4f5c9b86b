/**
 * The extension's side of the comm protocol against the one JSON schema the kernel's tests
 * also read (`jupyter_localllm/notebook/comm_schema.json`): the version and actions agree, the
 * type guards accept exactly what the schema accepts (its examples and hundreds of broken
 * variants of them), requests as sent match it, replies are matched by `request_id` alone, and
 * a kernel in another protocol version is refused with a sentence naming both versions.
 */

import { readFileSync } from 'node:fs';

import Ajv from 'ajv';
import { describe, expect, it } from 'vitest';

import {
  ACTIONS,
  Action,
  IRequestFields,
  PROTOCOL,
  Replies,
  isKernelMessage,
  protocolProblem
} from '../src/protocol';
import { refusalText } from '../src/status';

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Schema = { $id: string; definitions: Record<string, { examples?: Json[] }> };

const schema: Schema = JSON.parse(
  readFileSync(new URL('../../jupyter_localllm/notebook/comm_schema.json', import.meta.url), 'utf8')
);
const ajv = new Ajv({ strict: true, allErrors: false });
ajv.addSchema(schema);
const validator = (definition: string) => {
  const validate = ajv.getSchema(`${schema.$id}#/definitions/${definition}`);
  if (validate === undefined) {
    throw new Error(`no definition ${definition} in the schema`);
  }
  return (x: unknown) => validate(x) === true;
};
const kernelSchema = validator('kernel_message');
const requestSchema = validator('request');

const KERNEL_TYPES = ['state', 'models_available', 'done', 'error'];
const examples = (names: string[]): Json[] => names.flatMap(n => schema.definitions[n].examples ?? []);
const kernelExamples = examples(KERNEL_TYPES);
const requestExamples = examples(ACTIONS.map(a => `request_${a}`));

const clone = <T>(x: T): T => JSON.parse(JSON.stringify(x));
const WRONG: Json[] = [
  null, true, false, 0, -1, 1.5, 3, 2, '', 'x', 'running', 'x'.repeat(300), '\u{1F999}'.repeat(200),
  [], [{}], {}, { a: 1 }
];

/** Broken variants of `message`: each key dropped, set to each wrong value, an extra key;
 * the same inside each object of its arrays. */
function variants(message: { [key: string]: Json }): Json[] {
  const out: Json[] = [];
  const visit = (target: { [key: string]: Json }, root: { [key: string]: Json }) => {
    for (const key of Object.keys(target)) {
      const kept = target[key];
      delete target[key];
      out.push(clone(root));
      for (const value of WRONG) {
        target[key] = value;
        out.push(clone(root));
      }
      target[key] = kept;
      if (Array.isArray(kept)) {
        for (const item of kept) {
          if (item !== null && typeof item === 'object' && !Array.isArray(item)) {
            visit(item, root);
          }
        }
        target[key] = [];
        out.push(clone(root));
        target[key] = kept;
      }
    }
    target.extra = 1;
    out.push(clone(root));
    delete target.extra;
  };
  const root = clone(message);
  visit(root, root);
  return out;
}

describe('the schema and the extension agree', () => {
  it('on the protocol version and the actions', () => {
    const protocol = schema.definitions.protocol as unknown as { const: number };
    expect(PROTOCOL).toBe(protocol.const);
    const requests = Object.keys(schema.definitions)
      .filter(name => name.startsWith('request_') && name !== 'request_id')
      .map(name => name.slice('request_'.length));
    expect([...ACTIONS]).toEqual(requests);
  });

  it("on the schema's examples of every kernel message", () => {
    expect(kernelExamples.length).toBe(KERNEL_TYPES.length);
    for (const example of kernelExamples) {
      expect(kernelSchema(example)).toBe(true);
      expect(isKernelMessage(example)).toBe(true);
    }
  });

  it('on hundreds of broken variants of them: the guards accept exactly what the schema does', () => {
    let refused = 0;
    for (const example of kernelExamples) {
      if (example === null || typeof example !== 'object' || Array.isArray(example)) {
        throw new Error('an example is not an object');
      }
      for (const variant of variants(example)) {
        const bySchema = kernelSchema(variant);
        expect([isKernelMessage(variant), JSON.stringify(variant)]).toEqual([
          bySchema,
          JSON.stringify(variant)
        ]);
        refused += bySchema ? 0 : 1;
      }
    }
    expect(refused).toBeGreaterThan(300); // the variants do break things
  });

  it('on names counted in code points, as Python cuts them', () => {
    const [state] = clone(kernelExamples);
    const model = (state as { models: Array<{ name: string }> }).models[0];
    model.name = '\u{1F999}'.repeat(256); // 256 code points, 512 UTF-16 units
    expect([kernelSchema(state), isKernelMessage(state)]).toEqual([true, true]);
    model.name += 'x';
    expect([kernelSchema(state), isKernelMessage(state)]).toEqual([false, false]);
  });

  it('on every request the client sends', () => {
    const fields: { [A in Action]: IRequestFields[A] } = {
      state: {},
      cancel: { job: '3' },
      cancel_all: {},
      discover: {},
      load: { ref: 'gemma-3-270m', alias: null },
      unload: { alias: 'default' }
    };
    const replies = new Replies();
    const ids = new Set<string>();
    for (const action of ACTIONS) {
      const { message } = replies.request(action, fields[action], false);
      expect(requestSchema(message)).toBe(true);
      ids.add(message.request_id);
    }
    expect(ids.size).toBe(ACTIONS.length);
    expect(requestExamples.every(requestSchema)).toBe(true);
    expect(requestSchema({ action: 'load', protocol: PROTOCOL, request_id: '1' })).toBe(false);
  });
});

const state = (over: Record<string, Json> = {}) => ({
  type: 'state',
  protocol: PROTOCOL,
  request_id: null,
  models: [],
  jobs: [],
  ...over
});
const done = (requestId: string | null, action: string, message: string) => ({
  type: 'done',
  protocol: PROTOCOL,
  request_id: requestId,
  action,
  message
});

describe('replies are matched by request_id', () => {
  it('out of order, each to its own request', async () => {
    const replies = new Replies();
    const first = replies.request('load', { ref: 'a' }, true);
    const second = replies.request('load', { ref: 'b' }, true);
    const id = (r: typeof first) => r.message.request_id;
    expect(replies.receive(done(id(second), 'load', 'Loaded b.'))).toMatchObject({ answered: true });
    expect(replies.receive(done(id(first), 'load', 'Loaded a.'))).toMatchObject({ answered: true });
    await expect(first.reply).resolves.toMatchObject({ message: 'Loaded a.' });
    await expect(second.reply).resolves.toMatchObject({ message: 'Loaded b.' });
    expect(replies.pending).toBe(0);
  });

  it('never by type: a reply to nobody settles nothing, an error rejects only its request', async () => {
    const replies = new Replies();
    const load = replies.request('load', { ref: 'a' }, true);
    const unload = replies.request('unload', { alias: 'x' }, true);
    expect(replies.receive(done('someone-else', 'load', 'Loaded.'))).toMatchObject({
      kind: 'message',
      answered: false
    });
    expect(replies.receive(done(null, 'load', 'Loaded.'))).toMatchObject({ answered: false });
    expect(replies.receive(state({ request_id: load.message.request_id }))).toMatchObject({
      answered: true
    });
    await expect(load.reply).rejects.toThrow('The kernel answered load with state.');
    const error = { ...done(unload.message.request_id, 'unload', 'No model is loaded as x.') };
    replies.receive({ ...error, type: 'error' });
    await expect(unload.reply).rejects.toThrow('No model is loaded as x.');
  });

  it('a malformed reply rejects the request it names and is not passed on', async () => {
    const replies = new Replies();
    const discover = replies.request('discover', {}, true);
    const bad = {
      type: 'models_available',
      protocol: PROTOCOL,
      request_id: discover.message.request_id,
      models: [{ ref: 'x' }]
    };
    expect(replies.receive(bad)).toEqual({ kind: 'malformed', data: bad });
    await expect(discover.reply).rejects.toThrow('cannot read');
    expect(replies.receive('not even an object')).toMatchObject({ kind: 'malformed' });
  });
});

describe('another protocol version is refused, visibly', () => {
  it('names both versions and what to do', () => {
    const refusal = protocolProblem({ ...state(), protocol: 1 });
    expect(refusal?.kernelProtocol).toBe('1');
    expect(refusal?.message).toBe(
      "The kernel's jupyter-localllm speaks protocol 1 and this JupyterLab extension " +
        `protocol ${PROTOCOL}: install the same jupyter-localllm version in the kernel's ` +
        'environment and JupyterLab\u2019s, then restart the kernel and reload the page.'
    );
    expect(refusalText(refusal!)).toBe(
      `\u{1F999} jupyter-localllm: kernel protocol 1, extension ${PROTOCOL}: reinstall`
    );
    expect(protocolProblem(state())).toBeNull();
  });

  it('also a message with no version, or a version of another type', () => {
    for (const data of [{ type: 'state' }, { ...state(), protocol: '2' }, null, [], 'x']) {
      expect(protocolProblem(data)).not.toBeNull();
    }
    expect(protocolProblem({ type: 'state' })?.message).toContain('speaks no protocol version');
    expect(protocolProblem({ ...state(), protocol: '2' })?.kernelProtocol).toBe('2');
  });

  it('rejects every waiting request with the sentence instead of guessing', async () => {
    const replies = new Replies();
    const load = replies.request('load', { ref: 'a' }, true);
    const old = { type: 'done', protocol: 1, action: 'load', message: 'Loaded a.' };
    const got = replies.receive(old);
    expect(got.kind).toBe('refused');
    await expect(load.reply).rejects.toThrow('speaks protocol 1');
    expect(replies.pending).toBe(0);
    expect(isKernelMessage(old)).toBe(false); // a well-formed v1 message is no v2 message
  });
});
