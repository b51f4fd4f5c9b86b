/**
 * The LocalLLM commands (palette and the "LocalLLM" menu): Load model…, Unload model,
 * Cancel all jobs, Show dashboard. Each acts on the current notebook's kernel.
 */

import { JupyterFrontEnd } from '@jupyterlab/application';
import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { LocalLLMClient } from './kernel';
import { formatCount, isActive } from './status';

/** Command ids. */
export const CommandIDs = {
  load: 'localllm:load-model',
  unload: 'localllm:unload-model',
  cancelAll: 'localllm:cancel-all',
  dashboard: 'localllm:show-dashboard'
} as const;

/** The category the palette lists them under. */
export const CATEGORY = 'LocalLLM';

/** Register the commands; `current()` is the client of the current notebook's kernel. */
export function addCommands(
  app: JupyterFrontEnd,
  tracker: INotebookTracker,
  current: () => LocalLLMClient | null
): void {
  const ready = () => current()?.state != null;
  app.commands.addCommand(CommandIDs.load, {
    label: 'Load model…',
    caption: 'Load a GGUF model into the kernel',
    isEnabled: ready,
    execute: () => loadModel(current())
  });
  app.commands.addCommand(CommandIDs.unload, {
    label: 'Unload model…',
    caption: 'Free a model the kernel holds',
    isEnabled: () => (current()?.state?.models.length ?? 0) > 0,
    execute: () => unloadModel(current())
  });
  app.commands.addCommand(CommandIDs.cancelAll, {
    label: 'Cancel all jobs',
    caption: 'Stop every run in the kernel; finished rows stay',
    isEnabled: () => current()?.state?.jobs.some(isActive) ?? false,
    execute: () => current()?.cancelAll()
  });
  app.commands.addCommand(CommandIDs.dashboard, {
    label: 'Show dashboard',
    caption: 'Insert and run a %llm panel cell below the active cell',
    isEnabled: () => tracker.currentWidget !== null,
    execute: async () => {
      const panel = tracker.currentWidget;
      if (panel === null) {
        return;
      }
      NotebookActions.insertBelow(panel.content);
      panel.content.activeCell?.model.sharedModel.setSource('%llm panel');
      await NotebookActions.run(panel.content, panel.sessionContext);
    }
  });
}

/** A dialog body with one `<select>` (and an optional alias field). */
class ChoiceBody extends Widget implements Dialog.IBodyWidget<{ choice: string; alias: string }> {
  constructor(label: string, options: Array<[string, string]>, withAlias: boolean) {
    super();
    this.addClass('jp-LocalLLM-dialog');
    const text = document.createElement('label');
    text.textContent = label;
    this._select.className = 'jp-mod-styled jp-LocalLLM-choice';
    for (const [value, shown] of options) {
      const option = document.createElement('option');
      option.value = value;
      option.textContent = shown;
      this._select.append(option);
    }
    text.append(this._select);
    this.node.append(text);
    if (withAlias) {
      const aliasLabel = document.createElement('label');
      aliasLabel.textContent = 'Alias (optional)';
      this._alias.className = 'jp-mod-styled jp-LocalLLM-alias';
      this._alias.placeholder = 'the reference';
      aliasLabel.append(this._alias);
      this.node.append(aliasLabel);
    }
  }

  getValue(): { choice: string; alias: string } {
    return { choice: this._select.value, alias: this._alias.value.trim() };
  }

  private _select = document.createElement('select');
  private _alias = document.createElement('input');
}

async function loadModel(client: LocalLLMClient | null): Promise<void> {
  if (client === null) {
    return;
  }
  let models;
  try {
    models = await client.discover();
  } catch (error) {
    Notification.error(messageOf(error));
    return;
  }
  if (models.length === 0) {
    Notification.warning('The kernel found no model to load; see %llm list.');
    return;
  }
  const options: Array<[string, string]> = models.map(m => [
    m.ref,
    `${m.ref} (${m.source}, ${formatCount(m.size_mb)} MB)`
  ]);
  const result = await showDialog({
    title: 'Load model',
    body: new ChoiceBody('Model', options, true),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Load' })]
  });
  if (!result.button.accept || result.value === null) {
    return;
  }
  const { choice, alias } = result.value;
  await Notification.promise(client.load(choice, alias || null), {
    pending: { message: `Loading ${choice}…`, options: { autoClose: false } },
    success: { message: (message: unknown) => String(message || `Loaded ${choice}.`) },
    error: { message: messageOf }
  });
}

async function unloadModel(client: LocalLLMClient | null): Promise<void> {
  const models = client?.state?.models ?? [];
  if (client === null || models.length === 0) {
    return;
  }
  const result = await showDialog({
    title: 'Unload model',
    body: new ChoiceBody(
      'Model',
      models.map(m => [m.alias, `${m.alias}: ${m.name}`]),
      false
    ),
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Unload' })]
  });
  if (!result.button.accept || result.value === null) {
    return;
  }
  try {
    Notification.success(await client.unload(result.value.choice), { autoClose: 3000 });
  } catch (error) {
    Notification.error(messageOf(error));
  }
}

/** The text of a rejection: an Error's message, else the value as text. */
function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
