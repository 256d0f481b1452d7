// Host tool commands: Build Template (streams `perimeter template build` progress into a progress notification
// and the log) and Open Call Output (the click action of a call in the Sessions view). Run Doctor lives with the
// other host commands (hostCommands.ts).
import * as vscode from 'vscode';
import type { HostRegistry } from '../hosts';
import type { PerimeterModel } from '../views/model';
import type { PerimeterNode } from '../views/trees';
import { callUri } from '../documents/provider';
import { callLabel } from '../views/items';
import * as settings from '../settings';
import { requireTrust } from './workerCommands';

export function registerToolCommands(registry: HostRegistry, model: PerimeterModel, output: vscode.LogOutputChannel, log: (hostLabel: string, line: string) => void): vscode.Disposable[] {
  const hostOf = (node?: PerimeterNode | string) => registry.get(typeof node === 'string' ? node : node && 'hostId' in node ? node.hostId : registry.selectedHostId());
  return [
    vscode.commands.registerCommand('perimeter.buildTemplate', async (node?: PerimeterNode | string) => {
      if (!requireTrust('build a VM template')) return false;
      const sup = hostOf(node);
      if (!sup) return false;
      const r = await vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: `Perimeter: building the VM template on ${sup.host.label}`, cancellable: false },
        (progress) => sup.host.runCli('templateBuild', (text) => {
          for (const line of text.split('\n').filter((l) => l.trim())) { log(sup.host.label, line); progress.report({ message: line.slice(0, 120) }); }
        }, { vmSize: settings.vmSize() }));
      if (r.code === 0) {
        void vscode.window.showInformationMessage(`Perimeter: template built on ${sup.host.label}.`);
        await vscode.commands.executeCommand('setContext', 'perimeter.templateMissing', false);
        if (sup.hostId === registry.selectedHostId()) void vscode.commands.executeCommand('perimeter.refreshTemplates');
        return true;
      }
      void vscode.window.showErrorMessage(`Perimeter: template build failed on ${sup.host.label}: ${r.stderr.trim().split('\n').pop() ?? `exit ${r.code}`}`, 'Show Worker Log')
        .then((c) => { if (c) output.show(true); });
      return false;
    }),
    vscode.commands.registerCommand('perimeter.openCall', async (node?: PerimeterNode) => {
      if (!node || node.kind !== 'call') return undefined;
      const call = model.findCall(node.hostId, node.toolUseId);
      const uri = callUri({ hostId: node.hostId, toolUseId: node.toolUseId }, call ? callLabel(call.name, call.input) : 'call');
      const doc = await vscode.workspace.openTextDocument(uri);
      await vscode.window.showTextDocument(doc, { preview: true, preserveFocus: false });
      return doc;
    }),
  ];
}
