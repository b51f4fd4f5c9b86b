/**
 * The `%%llm` cell language for CodeMirror 6: a stream language whose tokens come from the
 * pure readers in `magic.ts`, with one stable CSS class per kind (`cm-llm-flag`,
 * `cm-llm-placeholder`, …) on top of the theme's colours.
 */

import {
  LanguageSupport,
  StreamLanguage,
  StringStream,
  syntaxHighlighting
} from '@codemirror/language';
import { Tag, tagHighlighter, tags as t } from '@lezer/highlight';

import {
  ISpan,
  SpanKind,
  interpolates,
  isLlmCell,
  markPromptLine,
  parseMagicLine
} from './magic';

/** The MIME type of `%%llm` cells (registered with JupyterLab's language registry). */
export const LLM_MIME = 'text/x-llm-prompt';

/** The standard tag of each kind, which themes already colour. */
const STANDARD: Record<SpanKind, Tag> = {
  magic: t.processingInstruction,
  flag: t.attributeName,
  value: t.string,
  alias: t.special(t.variableName),
  invalid: t.invalid,
  placeholder: t.special(t.variableName),
  escape: t.escape,
  heading: t.heading,
  strong: t.strong,
  emphasis: t.emphasis,
  code: t.monospace,
  quote: t.quote,
  list: t.list
};

const KINDS = Object.keys(STANDARD) as SpanKind[];

/** A tag of our own per kind, for the stable class below. */
const OWN = Object.fromEntries(KINDS.map(kind => [kind, Tag.define()])) as Record<SpanKind, Tag>;

/** What a token of each kind is tagged with: our tag and the standard one. */
const TOKEN_TABLE = Object.fromEntries(KINDS.map(kind => [kind, [OWN[kind], STANDARD[kind]]]));

/** Stable class names (`cm-llm-<kind>`) for styling and for tests. */
export const llmClasses = tagHighlighter(
  KINDS.map(kind => ({ tag: OWN[kind], class: `cm-llm-${kind}` }))
);

interface IState {
  /** The magic line was read (lines before it are blank). */
  magicSeen: boolean;
  interpolate: boolean;
  fence: boolean;
  /** The spans of the line being read. */
  spans: ISpan[];
}

/** The spans of the line `stream` is at, updating the state carried between lines. */
function readLine(line: string, state: IState): ISpan[] {
  if (!state.magicSeen && isLlmCell(line)) {
    state.magicSeen = true;
    state.interpolate = interpolates(line);
    return parseMagicLine(line);
  }
  const read = markPromptLine(line, { fence: state.fence }, state.interpolate);
  state.fence = read.state.fence;
  return read.spans;
}

const parser = {
  name: 'llm-prompt',
  startState: (): IState => ({ magicSeen: false, interpolate: true, fence: false, spans: [] }),
  copyState: (s: IState): IState => ({ ...s, spans: s.spans }),
  token(stream: StringStream, state: IState): string | null {
    if (stream.sol()) {
      state.spans = readLine(stream.string, state);
    }
    const here = stream.pos;
    const span = state.spans.find(s => s.to > here);
    if (span === undefined) {
      stream.skipToEnd();
      return null;
    }
    if (span.from > here) {
      stream.pos = span.from;
      return null;
    }
    stream.pos = span.to;
    return span.kind;
  },
  tokenTable: TOKEN_TABLE
};

/** CodeMirror support for `%%llm` cells: the language and its class highlighter. */
export function llmPromptSupport(): LanguageSupport {
  const language = StreamLanguage.define<IState>(parser);
  return new LanguageSupport(language, [syntaxHighlighting(llmClasses)]);
}
