/**
 * jupyter-localllm's JupyterLab extension: `%%llm` cells highlighted as prompts, a status-bar
 * item for the kernel's models and runs, and the LocalLLM commands. It talks to the kernel
 * only through the comm that `%load_ext jupyter_localllm` opens (see `kernel.ts`).
 */

import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, Notification } from '@jupyterlab/apputils';
import { IEditorLanguageRegistry } from '@jupyterlab/codemirror';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Kernel } from '@jupyterlab/services';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';

import { CellLanguages } from './cells';
import { CATEGORY, CommandIDs, addCommands } from './commands';
import { LocalLLMClient } from './kernel';
import { LLM_MIME, llmPromptSupport } from './language';
import { LocalLLMStatus } from './statusbar';

const PLUGIN_ID = 'jupyter-localllm:plugin';

/** One client per kernel connection, made when a notebook gets the kernel. */
class Clients {
  constructor(private readonly _onError: (message: string) => void) {}

  /** The client of `panel`'s kernel (`null` while it has none). */
  of(panel: NotebookPanel | null): LocalLLMClient | null {
    const kernel = panel?.sessionContext.session?.kernel ?? null;
    return kernel === null ? null : this._ensure(kernel);
  }

  /** Follow `panel`'s kernel; `changed` runs when it gets another one. */
  watch(panel: NotebookPanel, changed: () => void): void {
    panel.sessionContext.kernelChanged.connect((_, args) => {
      if (args.newValue) {
        this._ensure(args.newValue);
      }
      changed();
    });
    this.of(panel);
  }

  private _ensure(kernel: Kernel.IKernelConnection): LocalLLMClient {
    let client = this._clients.get(kernel);
    if (client === undefined) {
      const made = new LocalLLMClient(kernel);
      made.errors.connect((_, message) => this._onError(message));
      // Another protocol version: say so once, visibly (the status item says it too).
      made.refused.connect((_, refusal) => {
        Notification.error(refusal.message, { autoClose: false });
      });
      kernel.disposed.connect(() => {
        made.dispose();
        this._clients.delete(kernel);
      });
      this._clients.set(kernel, made);
      client = made;
    }
    return client;
  }

  private _clients = new Map<Kernel.IKernelConnection, LocalLLMClient>();
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Highlights %%llm cells, shows the kernel’s models and jobs in the status bar.',
  autoStart: true,
  requires: [INotebookTracker, IEditorLanguageRegistry],
  optional: [IStatusBar, ICommandPalette, ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    languages: IEditorLanguageRegistry,
    statusBar: IStatusBar | null,
    palette: ICommandPalette | null,
    settings: ISettingRegistry | null
  ) => {
    languages.addLanguage({
      name: 'llm-prompt',
      displayName: 'LLM prompt (%%llm)',
      mime: LLM_MIME,
      load: async () => llmPromptSupport()
    });
    const cells = new CellLanguages(languages);
    const status = new LocalLLMStatus();
    const clients = new Clients(message => {
      // Errors the kernel reports without a request waiting for them (e.g. a cancel).
      console.warn(`jupyter-localllm: ${message}`);
    });
    const showCurrent = () => {
      status.client = clients.of(tracker.currentWidget);
      app.commands.notifyCommandChanged();
    };
    tracker.widgetAdded.connect((_, panel) => {
      cells.watch(panel);
      clients.watch(panel, showCurrent);
    });
    tracker.currentChanged.connect(showCurrent);
    status.shownChanged.connect(() => app.commands.notifyCommandChanged());

    statusBar?.registerStatusItem('jupyter-localllm:status', {
      item: status,
      align: 'left',
      rank: 4,
      isActive: () => status.shown,
      activeStateChanged: status.shownChanged
    });

    addCommands(app, tracker, () => clients.of(tracker.currentWidget));
    for (const command of Object.values(CommandIDs)) {
      palette?.addItem({ command, category: CATEGORY });
    }

    if (settings !== null) {
      void settings.load(PLUGIN_ID).then(loaded => {
        const apply = () => {
          cells.enabled = loaded.get('highlighting').composite as boolean;
          status.enabled = loaded.get('statusBar').composite as boolean;
        };
        loaded.changed.connect(apply);
        apply();
      });
    }
  }
};

export default plugin;
