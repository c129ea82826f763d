/**
 * jupyter-hpcllm's JupyterLab extension: the "HPC LLM" sidebar, a log viewer per job, a status bar item
 * for the notebook's server, and their commands and palette entries.
 */
import type { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';
import { launchIcon } from '@jupyterlab/ui-components';

import { LogViewer } from './logviewer';
import type { ServerModel } from './models';
import { HpcllmSidebar } from './sidebar';
import { KernelServerStatus } from './statusbar';

const COMMANDS = {
  open: 'jupyter-hpcllm:open',
  refresh: 'jupyter-hpcllm:refresh',
  launch: 'jupyter-hpcllm:new-server'
};

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-hpcllm:plugin',
  description: 'Your cluster LLM servers in a sidebar.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, IStatusBar],
  activate: (
    app: JupyterFrontEnd,
    notebooks: INotebookTracker,
    palette: ICommandPalette | null,
    statusBar: IStatusBar | null
  ) => {
    const logs = new Map<string, MainAreaWidget<LogViewer>>();
    const openLogs = (profile: string, server: ServerModel): void => {
      const key = `${profile}/${server.job_id}`;
      let widget = logs.get(key);
      if (!widget || widget.isDisposed) {
        const viewer = new LogViewer(profile, server.job_id, server.model);
        widget = new MainAreaWidget({ content: viewer });
        widget.id = viewer.id;
        widget.title.label = viewer.title.label;
        widget.title.caption = viewer.title.caption;
        logs.set(key, widget);
        app.shell.add(widget, 'main', { mode: 'split-bottom' });
      }
      app.shell.activateById(widget.id);
    };
    const insertCode = (code: string): boolean => {
      const panel = notebooks.currentWidget;
      if (!panel) {
        return false;
      }
      if (panel.content.activeCell?.model.sharedModel.getSource().trim() !== '') {
        NotebookActions.insertBelow(panel.content); // (an empty active cell takes the code itself)
      }
      panel.content.activeCell?.model.sharedModel.setSource(code);
      app.shell.activateById(panel.id);
      return true;
    };
    const sidebar = new HpcllmSidebar({ insertCode, openLogs });
    sidebar.title.icon = launchIcon;
    app.shell.add(sidebar, 'left', { rank: 650 });

    if (statusBar) {
      const status = new KernelServerStatus(notebooks);
      statusBar.registerStatusItem('jupyter-hpcllm:kernel-server', {
        item: status,
        align: 'left',
        rank: 500,
        isActive: () => status.active,
        activeStateChanged: status.activeChanged
      });
    }

    app.commands.addCommand(COMMANDS.open, {
      label: 'HPC LLM: Show my cluster LLM servers',
      execute: () => app.shell.activateById(sidebar.id)
    });
    app.commands.addCommand(COMMANDS.refresh, {
      label: 'HPC LLM: Refresh the servers',
      execute: () => sidebar.poll.refresh()
    });
    app.commands.addCommand(COMMANDS.launch, {
      label: 'HPC LLM: Launch a model server…',
      execute: async args => {
        app.shell.activateById(sidebar.id);
        await sidebar.showForm(args.model ? { model: String(args.model) } : {});
      }
    });
    for (const command of Object.values(COMMANDS)) {
      palette?.addItem({ command, category: 'HPC LLM' });
    }
  }
};

export default plugin;
