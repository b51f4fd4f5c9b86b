/**
 * Reading `%%llm` cells for highlighting: pure functions over text, no JupyterLab imports.
 *
 * The first line is a command line (`%%llm -m ALIAS --max-tokens 200`); the body is a prompt
 * written in Markdown whose `{name}` placeholders the kernel fills from the notebook's
 * variables and whose `{{` / `}}` are literal braces (see `jupyter_localllm/notebook/magics.py`).
 */

/** What a stretch of text is, for highlighting. */
export type SpanKind =
  | 'magic'
  | 'flag'
  | 'value'
  | 'alias'
  | 'invalid'
  | 'placeholder'
  | 'escape'
  | 'heading'
  | 'strong'
  | 'emphasis'
  | 'code'
  | 'quote'
  | 'list';

/** A stretch `[from, to)` of one line and what it is. */
export interface ISpan {
  from: number;
  to: number;
  kind: SpanKind;
}

/** The options of `%%llm` that take a value (mirrors `_cell_parser` in magics.py; a Python
 * test checks that both lists agree). */
export const VALUE_OPTIONS: ReadonlySet<string> = new Set([
  '-m',
  '--model',
  '-s',
  '--system',
  '--max-tokens',
  '--temperature',
  '--seed',
  '-f',
  '--format',
  '--out'
]);

/** The options of `%%llm` that take no value. */
export const SWITCH_OPTIONS: ReadonlySet<string> = new Set([
  '--chat',
  '--no-chat',
  '--no-interpolate',
  '--no-stream',
]);

/** The options whose value names a loaded model. */
const MODEL_OPTIONS: ReadonlySet<string> = new Set(['-m', '--model']);

const MAGIC = /^%%llm(?=\s|$)/;

/** Whether a cell whose text is `source` is an `%%llm` cell (its first line starts with
 * `%%llm`, leading blank space allowed as IPython allows it). */
export function isLlmCell(source: string): boolean {
  return MAGIC.test(source.trimStart());
}

/** Whether the magic line turns placeholders off (`--no-interpolate`): braces are then text. */
export function interpolates(magicLine: string): boolean {
  return !words(magicLine).some(w => w.text === '--no-interpolate');
}

interface IWord {
  from: number;
  to: number;
  text: string;
}

/** The words of a command line: blank-separated, with '…' and "…" quoting (shell-like). */
function words(line: string): IWord[] {
  const found: IWord[] = [];
  const pattern = /(?:"(?:[^"\\]|\\.)*"?|'[^']*'?|[^\s"']+)+/g;
  for (let m = pattern.exec(line); m !== null; m = pattern.exec(line)) {
    found.push({ from: m.index, to: m.index + m[0].length, text: m[0] });
  }
  return found;
}

/** The spans of an `%%llm` magic line: the magic, known options (`flag`), their values
 * (`alias` for a model, `value` otherwise), and anything IPython would refuse (`invalid`). */
export function parseMagicLine(line: string): ISpan[] {
  const spans: ISpan[] = [];
  let expecting: string | null = null;
  for (const word of words(line)) {
    if (spans.length === 0 && MAGIC.test(word.text)) {
      spans.push({ from: word.from, to: word.to, kind: 'magic' });
      continue;
    }
    if (expecting !== null) {
      const kind = MODEL_OPTIONS.has(expecting) ? 'alias' : 'value';
      spans.push({ from: word.from, to: word.to, kind });
      expecting = null;
      continue;
    }
    const eq = word.text.startsWith('--') ? word.text.indexOf('=') : -1;
    const option = eq > 0 ? word.text.slice(0, eq) : word.text;
    if (VALUE_OPTIONS.has(option)) {
      if (eq > 0) {
        const kind = MODEL_OPTIONS.has(option) ? 'alias' : 'value';
        spans.push({ from: word.from, to: word.from + eq + 1, kind: 'flag' });
        spans.push({ from: word.from + eq + 1, to: word.to, kind });
      } else {
        spans.push({ from: word.from, to: word.to, kind: 'flag' });
        expecting = option;
      }
    } else if (SWITCH_OPTIONS.has(word.text)) {
      spans.push({ from: word.from, to: word.to, kind: 'flag' });
    } else {
      spans.push({ from: word.from, to: word.to, kind: 'invalid' });
    }
  }
  return spans;
}

/** A Python format field: a name, then `.attr` / `[key]` parts, a `!r` conversion and a
 * `:spec` (what `string.Formatter` accepts for the kernel's namespace lookup). */
const FIELD = /^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[[^\]{}]*\])*(?:![rsa])?(?::[^{}]*)?$/;

/** The brace spans of one prompt line: `{{` and `}}` are escapes, `{field}` a placeholder,
 * and a lone or malformed brace `invalid` (the kernel would refuse the cell). */
export function markBraces(line: string): ISpan[] {
  const spans: ISpan[] = [];
  let i = 0;
  while (i < line.length) {
    const c = line[i];
    if ((c === '{' || c === '}') && line[i + 1] === c) {
      spans.push({ from: i, to: i + 2, kind: 'escape' });
      i += 2;
    } else if (c === '{') {
      const end = line.indexOf('}', i + 1);
      const kind = end > 0 && FIELD.test(line.slice(i + 1, end)) ? 'placeholder' : 'invalid';
      const to = end > 0 && kind === 'placeholder' ? end + 1 : i + 1;
      spans.push({ from: i, to, kind });
      i = to;
    } else if (c === '}') {
      spans.push({ from: i, to: i + 1, kind: 'invalid' });
      i += 1;
    } else {
      i += 1;
    }
  }
  return spans;
}

/** Markdown that a prompt line may hold: inline code, strong and emphasis. */
const INLINE: ReadonlyArray<[RegExp, SpanKind]> = [
  [/`[^`]+`/g, 'code'],
  [/\*\*[^*]+\*\*|__[^_]+__/g, 'strong'],
  [/(?<![*\w])\*[^*\s][^*]*\*(?!\*)|(?<![_\w])_[^_\s][^_]*_(?![_\w])/g, 'emphasis']
];

/** The state carried from one prompt line to the next. */
export interface IPromptState {
  /** Inside a ``` fenced block. */
  fence: boolean;
}

/** The spans of one line of a prompt body (Markdown, then braces over it when
 * `interpolate`), and the state for the next line. */
export function markPromptLine(
  line: string,
  state: IPromptState,
  interpolate = true
): { spans: ISpan[]; state: IPromptState } {
  const kinds: Array<SpanKind | null> = new Array(line.length).fill(null);
  const fill = (from: number, to: number, kind: SpanKind, over = false) => {
    for (let i = from; i < to; i++) {
      if (over || kinds[i] === null) {
        kinds[i] = kind;
      }
    }
  };
  let fence = state.fence;
  if (/^\s*```/.test(line)) {
    fill(0, line.length, 'code');
    fence = !fence;
  } else if (fence) {
    fill(0, line.length, 'code');
  } else {
    markBlock(line, fill);
    for (const [pattern, kind] of INLINE) {
      for (const m of line.matchAll(pattern)) {
        fill(m.index ?? 0, (m.index ?? 0) + m[0].length, kind);
      }
    }
  }
  if (interpolate) {
    for (const span of markBraces(line)) {
      fill(span.from, span.to, span.kind, true);
    }
  }
  return { spans: collapse(kinds), state: { fence } };
}

/** Block-level Markdown: a heading line, a quote marker, a list marker. */
function markBlock(line: string, fill: (from: number, to: number, kind: SpanKind) => void) {
  const heading = /^\s{0,3}#{1,6}(\s|$)/.exec(line);
  const quote = /^\s{0,3}>/.exec(line);
  const list = /^\s*(?:[-*+]|\d+[.)])\s/.exec(line);
  if (heading) {
    fill(0, line.length, 'heading');
  } else if (quote) {
    fill(0, quote[0].length, 'quote');
  } else if (list) {
    fill(0, list[0].length - 1, 'list');
  }
}

/** Runs of one kind as spans (unmarked characters make no span). */
function collapse(kinds: Array<SpanKind | null>): ISpan[] {
  const spans: ISpan[] = [];
  let start = 0;
  for (let i = 1; i <= kinds.length; i++) {
    if (i === kinds.length || kinds[i] !== kinds[start]) {
      const kind = kinds[start];
      if (kind !== null && kind !== undefined) {
        spans.push({ from: start, to: i, kind });
      }
      start = i;
    }
  }
  return spans;
}
