import { describe, expect, it } from 'vitest';

import { IJobInfo, IKernelState, IModelInfo } from '../src/protocol';
import {
  formatDuration,
  jobLine,
  shortName,
  statusText,
  statusTitle
} from '../src/status';

const smol: IModelInfo = {
  alias: 'default',
  name: 'Smollm2 135M 8k Lc100K Mix1 Ep2',
  file: 'SmolLM2-135M-Instruct.Q4_1.gguf',
  size_mb: 98.2,
  n_ctx: 2048,
  default: true
};
const gemma: IModelInfo = {
  alias: 'gemma',
  name: 'gemma-3-270m-it-Q4_K_M',
  file: '',
  size_mb: 241,
  n_ctx: null,
  default: false
};

function job(over: Partial<IJobInfo> = {}): IJobInfo {
  return {
    id: '1',
    desc: 'generate',
    model: 'default',
    status: 'running',
    background: true,
    done: 812,
    total: 2000,
    errors: 0,
    tokens_per_s: 96.4,
    eta_s: 41,
    ...over
  };
}

function state(over: Partial<IKernelState> = {}): IKernelState {
  return { type: 'state', protocol: 2, request_id: null, models: [smol], jobs: [], ...over };
}

describe('statusText', () => {
  it('is hidden without state (extension not loaded in the kernel)', () => {
    expect(statusText(null)).toBeNull();
  });

  it('shows the running job: model, rows, rate', () => {
    expect(statusText(state({ jobs: [job()] }))).toBe(
      '🦙 SmolLM2-135M-Instruct · 812/2,000 rows · 96 tok/s'
    );
  });

  it('leaves the rate out until it is known, and counts queued jobs', () => {
    const jobs = [job({ tokens_per_s: 0, done: 0 }), job({ id: '2', status: 'queued' })];
    expect(statusText(state({ jobs }))).toBe('🦙 SmolLM2-135M-Instruct · 0/2,000 rows · +1 queued');
  });

  it('names the model of the job, not the default one', () => {
    const s = state({ models: [smol, gemma], jobs: [job({ model: 'gemma' })] });
    expect(statusText(s)).toBe('🦙 gemma-3-270m-it · 812/2,000 rows · 96 tok/s');
  });

  it('shows the default model when idle, ended jobs do not count', () => {
    expect(statusText(state({ jobs: [job({ status: 'cancelled' })] }))).toBe(
      '🦙 SmolLM2-135M-Instruct'
    );
    expect(statusText(state({ models: [gemma, { ...smol, default: true }] }))).toBe(
      '🦙 SmolLM2-135M-Instruct +1'
    );
    expect(statusText(state({ models: [] }))).toBe('🦙 no model loaded');
  });
});

describe('jobLine and statusTitle', () => {
  it('says what a job is doing or how it ended', () => {
    expect(jobLine(job())).toBe('generate · 812/2,000 rows · 96 tok/s · 41 s left');
    expect(jobLine(job({ status: 'cancelled', errors: 1, tokens_per_s: 0 }))).toBe(
      'generate · 812/2,000 rows · 1 error · cancelled'
    );
    expect(jobLine(job({ errors: 3, eta_s: 200 }))).toBe(
      'generate · 812/2,000 rows · 96 tok/s · 3 errors · 3 min 20 s left'
    );
  });

  it('lists the models in the tooltip', () => {
    const title = statusTitle(state({ models: [smol, gemma] }));
    expect(title).toContain(
      'default (the default): SmolLM2-135M-Instruct (Smollm2 135M 8k Lc100K Mix1 Ep2), 98 MB, n_ctx 2,048'
    );
    expect(title).toContain('gemma: gemma-3-270m-it (gemma-3-270m-it-Q4_K_M), 241 MB, n_ctx auto');
    expect(statusTitle(state())).toMatch(/^default: SmolLM2-135M-Instruct \(/);
  });
});

describe('shortName and formatDuration', () => {
  it('drops quantization suffixes', () => {
    expect(shortName('SmolLM2-135M-Instruct.Q4_1')).toBe('SmolLM2-135M-Instruct');
    expect(shortName('qwen2.5-coder-0.5b-instruct-q4_k_m.gguf')).toBe(
      'qwen2.5-coder-0.5b-instruct'
    );
    expect(shortName('model-f16')).toBe('model');
    expect(shortName('plain')).toBe('plain');
  });

  it('reads like a person wrote it', () => {
    expect(formatDuration(8.4)).toBe('8 s');
    expect(formatDuration(120)).toBe('2 min');
    expect(formatDuration(3 * 3600 + 300)).toBe('3 h 5 min');
    expect(formatDuration(-1)).toBe('0 s');
  });
});
