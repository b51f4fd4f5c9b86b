import { describe, expect, it } from 'vitest';

import {
  ISpan,
  interpolates,
  isLlmCell,
  markBraces,
  markPromptLine,
  parseMagicLine
} from '../src/magic';

/** The text and kind of each span of `line`. */
function shown(line: string, spans: ISpan[]): Array<[string, string]> {
  return spans.map(s => [line.slice(s.from, s.to), s.kind]);
}

describe('isLlmCell', () => {
  it('knows an %%llm cell by its first line', () => {
    expect(isLlmCell('%%llm\nSay hi')).toBe(true);
    expect(isLlmCell('%%llm -m smol')).toBe(true);
    expect(isLlmCell('  %%llm')).toBe(true);
  });

  it('refuses other magics and Python', () => {
    expect(isLlmCell('%%llmx\nhi')).toBe(false);
    expect(isLlmCell('%llm load default')).toBe(false);
    expect(isLlmCell('%%time\n%%llm')).toBe(false);
    expect(isLlmCell('print("%%llm")')).toBe(false);
    expect(isLlmCell('')).toBe(false);
  });
});

describe('parseMagicLine', () => {
  it('marks the magic, options, the model alias and values', () => {
    const line = '%%llm -m smol --max-tokens 200 --no-stream -f json';
    expect(shown(line, parseMagicLine(line))).toEqual([
      ['%%llm', 'magic'],
      ['-m', 'flag'],
      ['smol', 'alias'],
      ['--max-tokens', 'flag'],
      ['200', 'value'],
      ['--no-stream', 'flag'],
      ['-f', 'flag'],
      ['json', 'value']
    ]);
  });

  it('reads --option=value and quoted values as one word', () => {
    const line = '%%llm --model=gemma -s "You are terse." --temperature=0.2';
    expect(shown(line, parseMagicLine(line))).toEqual([
      ['%%llm', 'magic'],
      ['--model=', 'flag'],
      ['gemma', 'alias'],
      ['-s', 'flag'],
      ['"You are terse."', 'value'],
      ['--temperature=', 'flag'],
      ['0.2', 'value']
    ]);
  });

  it('marks unknown options and stray words invalid', () => {
    const line = '%%llm --max-token 5 extra';
    expect(shown(line, parseMagicLine(line))).toEqual([
      ['%%llm', 'magic'],
      ['--max-token', 'invalid'],
      ['5', 'invalid'],
      ['extra', 'invalid']
    ]);
  });

  it('gives spans in order that do not overlap', () => {
    const spans = parseMagicLine("%%llm -m a -s 'x y' --seed 3 --out v --no-interpolate");
    for (let i = 1; i < spans.length; i++) {
      expect(spans[i].from).toBeGreaterThanOrEqual(spans[i - 1].to);
    }
  });

  it('knows when placeholders are off', () => {
    expect(interpolates('%%llm -m a')).toBe(true);
    expect(interpolates('%%llm --no-interpolate')).toBe(false);
  });
});

describe('markBraces', () => {
  it('marks placeholders, escapes and stray braces', () => {
    const line = 'Label {text} as {{json}}, see {row.title} and {items[0]!r:>10} }';
    expect(shown(line, markBraces(line))).toEqual([
      ['{text}', 'placeholder'],
      ['{{', 'escape'],
      ['}}', 'escape'],
      ['{row.title}', 'placeholder'],
      ['{items[0]!r:>10}', 'placeholder'],
      ['}', 'invalid']
    ]);
  });

  it('refuses what Python format fields refuse', () => {
    expect(shown('{}', markBraces('{}'))).toEqual([
      ['{', 'invalid'],
      ['}', 'invalid']
    ]);
    expect(shown('{1x}', markBraces('{1x}'))[0]).toEqual(['{', 'invalid']);
    expect(shown('open {brace', markBraces('open {brace'))).toEqual([['{', 'invalid']]);
  });
});

describe('markPromptLine', () => {
  const start = { fence: false };

  it('marks Markdown: headings, lists, quotes, strong, emphasis, code', () => {
    expect(shown('# Task', markPromptLine('# Task', start).spans)).toEqual([['# Task', 'heading']]);
    const line = '- be **brief** and *exact*, answer `yes`';
    expect(shown(line, markPromptLine(line, start).spans)).toEqual([
      ['-', 'list'],
      ['**brief**', 'strong'],
      ['*exact*', 'emphasis'],
      ['`yes`', 'code']
    ]);
    expect(shown('> quoted', markPromptLine('> quoted', start).spans)).toEqual([['>', 'quote']]);
  });

  it('puts placeholders over Markdown, not under it', () => {
    const line = '## About {topic}';
    expect(shown(line, markPromptLine(line, start).spans)).toEqual([
      ['## About ', 'heading'],
      ['{topic}', 'placeholder']
    ]);
  });

  it('leaves braces alone with --no-interpolate', () => {
    const line = 'JSON: {"a": 1}';
    expect(markPromptLine(line, start, false).spans).toEqual([]);
    expect(shown(line, markPromptLine(line, start, true).spans)[0]).toEqual(['{', 'invalid']);
  });

  it('carries fenced code from line to line', () => {
    const open = markPromptLine('```json', start);
    expect(open.state.fence).toBe(true);
    const inside = markPromptLine('# not a heading {x}', open.state);
    expect(shown('# not a heading {x}', inside.spans)).toEqual([
      ['# not a heading ', 'code'],
      ['{x}', 'placeholder']
    ]);
    expect(markPromptLine('```', inside.state).state.fence).toBe(false);
  });

  it('marks nothing in plain prose', () => {
    expect(markPromptLine('Classify the sentiment of this tweet.', start).spans).toEqual([]);
  });
});
