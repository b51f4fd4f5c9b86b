import { ensureSyntaxTree } from '@codemirror/language';
import { EditorState } from '@codemirror/state';
import { highlightTree } from '@lezer/highlight';
import { describe, expect, it } from 'vitest';

import { llmClasses, llmPromptSupport } from '../src/language';

/** The `cm-llm-*` class CodeMirror gives each token of `doc`: [text, class] pairs. */
function classes(doc: string): Array<[string, string]> {
  const state = EditorState.create({ doc, extensions: [llmPromptSupport()] });
  const tree = ensureSyntaxTree(state, doc.length, 5000);
  expect(tree).not.toBeNull();
  const found: Array<[string, string]> = [];
  highlightTree(tree!, llmClasses, (from, to, cls) => found.push([doc.slice(from, to), cls]));
  return found;
}

describe('the %%llm language in CodeMirror', () => {
  it('gives the magic line and the prompt their classes', () => {
    const doc = '%%llm -m smol --max-tokens 50\n# Task\nSay {greeting} to {{you}}.';
    expect(classes(doc)).toEqual([
      ['%%llm', 'cm-llm-magic'],
      ['-m', 'cm-llm-flag'],
      ['smol', 'cm-llm-alias'],
      ['--max-tokens', 'cm-llm-flag'],
      ['50', 'cm-llm-value'],
      ['# Task', 'cm-llm-heading'],
      ['{greeting}', 'cm-llm-placeholder'],
      ['{{', 'cm-llm-escape'],
      ['}}', 'cm-llm-escape']
    ]);
  });

  it('keeps state across blank lines and fences', () => {
    const doc = '%%llm --no-interpolate\n\n```\n{"a": 1}\n```\n{x}';
    expect(classes(doc)).toEqual([
      ['%%llm', 'cm-llm-magic'],
      ['--no-interpolate', 'cm-llm-flag'],
      ['```', 'cm-llm-code'],
      ['{"a": 1}', 'cm-llm-code'],
      ['```', 'cm-llm-code']
    ]);
  });
});
