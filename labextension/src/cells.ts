/**
 * Switch a code cell's language to the `%%llm` prompt language while its first line is
 * `%%llm`, and back to the notebook's language when that line changes (the approach
 * jupyterlab-lsp takes for cell magics). Only the editor's MIME type changes; the saved
 * notebook does not.
 */

import { ICellModel } from '@jupyterlab/cells';
import { NotebookPanel } from '@jupyterlab/notebook';

import { LLM_MIME } from './language';
import { isLlmCell } from './magic';

/** Keeps the cells of open notebooks in the right language. */
export class CellLanguages {
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
    const source = model.sharedModel.getSource();
    const llm = this._enabled && isLlmCell(source.slice(0, source.indexOf('\n') + 1 || undefined));
    const wanted = llm ? LLM_MIME : panel.content.codeMimetype;
    if (model.mimeType !== wanted) {
      model.mimeType = wanted;
    }
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
