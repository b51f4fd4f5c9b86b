/**
 * Switch a code cell's language to the `%%llm` prompt language while its first line is
 * `%%llm`, and back to the notebook's language when that line changes (the approach
 * jupyterlab-lsp takes for cell magics). Only the editor's MIME type changes; the saved
 * notebook does not.
 */

import { ICellModel } from '@jupyterlab/cells';
import { IEditorLanguageRegistry } from '@jupyterlab/codemirror';
import { NotebookPanel } from '@jupyterlab/notebook';

import { LLM_MIME } from './language';
import { isLlmCell } from './magic';

/** Keeps the cells of open notebooks in the right language. */
export class CellLanguages {
  constructor(private readonly _languages: IEditorLanguageRegistry) {}

  /** Whether `%%llm` cells get their own language (the `highlighting` setting). */
  get enabled(): boolean {
    return this._enabled;
  }

  set enabled(value: boolean) {
    this._enabled = value;
    for (const panel of this._panels) {
      this._updateAll(panel);
    }
  }

  /** Watch `panel`'s cells (as they are added, edited, and re-typed by the notebook). */
  watch(panel: NotebookPanel): void {
    this._panels.add(panel);
    panel.disposed.connect(() => this._panels.delete(panel));
    const attach = () => {
      const cells = panel.content.model?.cells;
      if (!cells) {
        return;
      }
      for (const model of cells) {
        this._watchCell(panel, model);
      }
      cells.changed.connect((_, change) => {
        for (const model of change.newValues) {
          this._watchCell(panel, model);
        }
      });
    };
    void panel.context.ready.then(attach);
  }

  private _watchCell(panel: NotebookPanel, model: ICellModel): void {
    if (model.type !== 'code' || this._watched.has(model)) {
      return;
    }
    this._watched.add(model);
    const update = () => this._update(panel, model);
    model.contentChanged.connect(update);
    model.mimeTypeChanged.connect(update); // the notebook re-types cells when the kernel changes
    update();
  }

  private _update(panel: NotebookPanel, model: ICellModel): void {
    if (model.isDisposed) {
      return;
    }
    if (!this._isLlm(model)) {
      if (model.mimeType === LLM_MIME) {
        model.mimeType = panel.content.codeMimetype;
      }
      return;
    }
    const current = model.mimeType;
    if (current === LLM_MIME) {
      return;
    }
    // The editor loads the language of each MIME type it is given asynchronously and applies
    // whichever load finishes last. When the notebook re-types the cell (kernel info), let
    // that language's load finish first, then switch, so the prompt language is applied last.
    void this._languages
      .getLanguage(current)
      .catch(() => null)
      .then(() => new Promise(resolve => setTimeout(resolve, 0)))
      .then(() => {
        if (!model.isDisposed && this._isLlm(model)) {
          model.mimeType = LLM_MIME;
        }
      });
  }

  private _isLlm(model: ICellModel): boolean {
    const source = model.sharedModel.getSource();
    const end = source.indexOf('\n');
    return this._enabled && isLlmCell(end < 0 ? source : source.slice(0, end));
  }

  private _updateAll(panel: NotebookPanel): void {
    for (const model of panel.content.model?.cells ?? []) {
      if (model.type === 'code') {
        this._update(panel, model);
      }
    }
  }

  private _enabled = true;
  private _panels = new Set<NotebookPanel>();
  private _watched = new WeakSet<ICellModel>();
}
