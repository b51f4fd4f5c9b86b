/**
 * Names from model files, aliases and kernel messages are untrusted (issue 25): the extension
 * puts them in the page as text only (textContent, option text, title, notification text),
 * never as HTML. The status texts keep them verbatim (escaping them here would show `&lt;`
 * under textContent), and no source file writes HTML into the DOM.
 */

import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { IKernelState } from '../src/protocol';
import { jobLine, jobModelName, statusText, statusTitle } from '../src/status';

const HOSTILE = '<img src=x onerror=window.__pwned=1>';

const state: IKernelState = {
  type: 'state',
  protocol: 2,
  request_id: null,
  models: [
    {
      alias: `${HOSTILE} alias`,
      name: `<script>window.__pwned=2</script>`,
      file: `${HOSTILE}.gguf`,
      size_mb: 93.8,
      n_ctx: null,
      default: true
    }
  ],
  jobs: [
    {
      id: '"><svg onload=window.__pwned=3>',
      desc: `${HOSTILE} desc`,
      model: `${HOSTILE} alias`,
      status: 'running',
      background: true,
      done: 1,
      total: 2,
      errors: 0,
      tokens_per_s: 0,
      eta_s: null
    }
  ]
};

describe('untrusted names', () => {
  it('stay verbatim in the status texts (they are set as text)', () => {
    expect(statusText(state)).toBe(`\u{1F999} ${HOSTILE} · 1/2 rows`);
    expect(jobModelName(state, state.jobs[0])).toBe(HOSTILE);
    expect(jobLine(state.jobs[0])).toBe(`${HOSTILE} desc · 1/2 rows`);
    const title = statusTitle(state);
    expect(title).toContain(`${HOSTILE} alias: ${HOSTILE} (<script>window.__pwned=2</script>)`);
  });

  it('never reach the DOM as HTML', () => {
    const folder = join(__dirname, '..', 'src');
    const writesHtml = /innerHTML|outerHTML|insertAdjacentHTML|dangerouslySetInnerHTML|createContextualFragment|document\.write/;
    for (const file of readdirSync(folder).filter(f => f.endsWith('.ts'))) {
      const source = readFileSync(join(folder, file), 'utf8');
      expect(writesHtml.test(source), `${file} writes HTML into the page`).toBe(false);
    }
  });
});
