/**
 * The words the status bar and its popup show for the kernel's state (`protocol.ts`): pure
 * functions, no JupyterLab imports.
 */

import { IJobInfo, IKernelState, IModelInfo, IRefusal, PROTOCOL } from './protocol';

const LLAMA = '\u{1F999}';
const numbers = new Intl.NumberFormat('en-US');

/** Whether `job` has not ended. */
export function isActive(job: IJobInfo): boolean {
  return job.status === 'queued' || job.status === 'running';
}

/** A model's name without its file's quantization suffix
 * (`SmolLM2-135M-Instruct.Q4_1` → `SmolLM2-135M-Instruct`). */
export function shortName(name: string): string {
  const short = name
    .replace(/\.gguf$/i, '')
    .replace(/[.\-_](?:[IQ]?Q\d[\w]*|F16|BF16|F32)$/i, '');
  return short || name;
}

/** The name the status bar shows for a model: its file's name without the quantization
 * suffix (the name people know a download by), else its own name. */
export function modelName(model: IModelInfo): string {
  return shortName(model.file || model.name);
}

/** `1234` → `1,234`. */
export function formatCount(n: number): string {
  return numbers.format(Math.round(n));
}

/** A duration for people: `8 s`, `3 min 20 s`, `2 h 5 min`. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) {
    return `${s} s`;
  }
  if (s < 3600) {
    const rest = s % 60;
    return rest ? `${Math.floor(s / 60)} min ${rest} s` : `${s / 60} min`;
  }
  const minutes = Math.round((s % 3600) / 60);
  return minutes ? `${Math.floor(s / 3600)} h ${minutes} min` : `${Math.floor(s / 3600)} h`;
}

/** The name of the model a job runs on (its alias's model, else the default model). */
export function jobModelName(state: IKernelState, job: IJobInfo): string {
  const model =
    state.models.find(m => m.alias === job.model) ?? state.models.find(m => m.default);
  return model ? modelName(model) : (job.model ?? 'model');
}

/** `812/2,000 rows · 96 tok/s` (the rate once known). */
export function jobProgress(job: IJobInfo): string {
  const parts = [`${formatCount(job.done)}/${formatCount(job.total)} rows`];
  if (job.tokens_per_s > 0) {
    parts.push(`${formatCount(job.tokens_per_s)} tok/s`);
  }
  return parts.join(' · ');
}

/** One line of the popup for a job: what it is, how far, errors, time left or how it ended. */
export function jobLine(job: IJobInfo): string {
  const parts = [job.desc, jobProgress(job)];
  if (job.errors > 0) {
    parts.push(`${formatCount(job.errors)} error${job.errors === 1 ? '' : 's'}`);
  }
  if (job.status === 'running' && job.eta_s !== null) {
    parts.push(`${formatDuration(job.eta_s)} left`);
  } else if (job.status !== 'running') {
    parts.push(job.status);
  }
  return parts.join(' · ');
}

/** The status-bar text: the first running job, else the default model, else that none is
 * loaded; `null` when there is no state (the kernel has not loaded the extension). */
export function statusText(state: IKernelState | null): string | null {
  if (state === null) {
    return null;
  }
  const active = state.jobs.filter(isActive);
  const job = active.find(j => j.status === 'running') ?? active[0];
  if (job !== undefined) {
    const more = active.length > 1 ? ` · +${active.length - 1} queued` : '';
    const progress = job.status === 'queued' ? 'queued' : jobProgress(job);
    return `${LLAMA} ${jobModelName(state, job)} · ${progress}${more}`;
  }
  const model = state.models.find(m => m.default) ?? state.models[0];
  if (model === undefined) {
    return `${LLAMA} no model loaded`;
  }
  const others = state.models.length > 1 ? ` +${state.models.length - 1}` : '';
  return `${LLAMA} ${modelName(model)}${others}`;
}

/** The status item's tooltip: each model (alias, name, size, context) and each active job. */
export function statusTitle(state: IKernelState | null): string {
  if (state === null) {
    return '';
  }
  const lines = state.models.map(m => {
    const ctx = m.n_ctx === null ? 'n_ctx auto' : `n_ctx ${formatCount(m.n_ctx)}`;
    const star = m.default && state.models.length > 1 ? ' (the default)' : '';
    return `${m.alias}${star}: ${modelName(m)} (${m.name}), ${formatCount(m.size_mb)} MB, ${ctx}`;
  });
  if (lines.length === 0) {
    lines.push('No model loaded: run %llm load default, or LocalLLM › Load model…');
  }
  for (const job of state.jobs.filter(isActive)) {
    lines.push(jobLine(job));
  }
  lines.push('Click for the jobs.');
  return lines.join('\n');
}

/** The status-bar text while the client refuses the kernel (the tooltip shows the whole
 * sentence). */
export function refusalText(refusal: IRefusal): string {
  return `${LLAMA} jupyter-localllm: kernel protocol ${refusal.kernelProtocol}, extension ${PROTOCOL}: reinstall`;
}
