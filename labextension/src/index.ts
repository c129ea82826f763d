/** jupyter-hpcllm's JupyterLab extension: the "HPC LLM" sidebar, its commands and palette entries. */
import type { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { launchIcon } from '@jupyterlab/ui-components';

import { HpcllmSidebar } from './sidebar';

const COMMANDS = { open: 'jupyter-hpcllm:open', refresh: 'jupyter-hpcllm:refresh' };

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-hpcllm:plugin',
  description: 'Your cluster LLM servers in a sidebar.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette],
  activate: (app: JupyterFrontEnd, notebooks: INotebookTracker, palette: ICommandPalette | null) => {
    const sidebar = new HpcllmSidebar(code => {
      const panel = notebooks.currentWidget;
      if (!panel) {
        return false;
      }
      NotebookActions.insertBelow(panel.content);
      panel.content.activeCell?.model.sharedModel.setSource(code);
      app.shell.activateById(panel.id);
      return true;
    });
    sidebar.title.icon = launchIcon;
    app.shell.add(sidebar, 'left', { rank: 650 });
    app.commands.addCommand(COMMANDS.open, {
      label: 'HPC LLM: Show my cluster LLM servers',
      execute: () => app.shell.activateById(sidebar.id)
    });
    app.commands.addCommand(COMMANDS.refresh, {
      label: 'HPC LLM: Refresh the servers',
      execute: () => sidebar.poll.refresh()
    });
    for (const command of Object.values(COMMANDS)) {
      palette?.addItem({ command, category: 'HPC LLM' });
    }
  }
};

export default plugin;
