// Host tool commands: Build Template (streams `perimeter template build` progress into a progress notification
// and the log), Run Doctor (`perimeter doctor --json`, shown as a JSON document; updates the welcome-view context
// keys), and Open Call Output (the click action of a call in the Sessions view).
import * as vscode from 'vscode';
import type { HostRegistry } from '../hosts';
import type { PerimeterModel } from '../views/model';
import type { PerimeterNode } from '../views/trees';
import { callUri } from '../documents/provider';
import { readDoctor } from '../launcher/doctor';
import { requireTrust } from './workerCommands';

export async function applyDoctorContext(json: unknown): Promise<void> {
  const facts = readDoctor(json);
  await vscode.commands.executeCommand('setContext', 'perimeter.noKvm', facts.kvm === false);
  await vscode.commands.executeCommand('setContext', 'perimeter.templateMissing', facts.template === false);
}

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
        }));
      if (r.code === 0) {
        void vscode.window.showInformationMessage(`Perimeter: template built on ${sup.host.label}.`);
        await vscode.commands.executeCommand('setContext', 'perimeter.templateMissing', false);
        return true;
      }
      void vscode.window.showErrorMessage(`Perimeter: template build failed on ${sup.host.label}: ${r.stderr.trim().split('\n').pop() ?? `exit ${r.code}`}`, 'Show Worker Log')
        .then((c) => { if (c) output.show(true); });
      return false;
    }),
    vscode.commands.registerCommand('perimeter.runDoctor', async (node?: PerimeterNode | string) => {
      const sup = hostOf(node);
      if (!sup) return undefined;
      const r = await vscode.window.withProgress({ location: vscode.ProgressLocation.Window, title: `Perimeter: doctor on ${sup.host.label}` }, () => sup.host.runCli('doctor'));
      let json: unknown;
      try { json = JSON.parse(r.stdout); } catch {
        void vscode.window.showErrorMessage(`Perimeter: doctor on ${sup.host.label} failed: ${(r.stderr || r.stdout).trim().split('\n').pop() ?? `exit ${r.code}`}`);
        return undefined;
      }
      await applyDoctorContext(json);
      const doc = await vscode.workspace.openTextDocument({ language: 'json', content: JSON.stringify(json, null, 2) + '\n' });
      await vscode.window.showTextDocument(doc, { preview: true });
      const problems = readDoctor(json).problems;
      if (problems.length) void vscode.window.showWarningMessage(`Perimeter doctor (${sup.host.label}): ${problems.length} problem${problems.length === 1 ? '' : 's'}: ${problems.slice(0, 3).join('; ')}`);
      return json;
    }),
    vscode.commands.registerCommand('perimeter.openCall', async (node?: PerimeterNode) => {
      if (!node || node.kind !== 'call') return undefined;
      const call = model.findCall(node.hostId, node.toolUseId);
      const uri = callUri({ hostId: node.hostId, toolUseId: node.toolUseId }, call?.name ?? 'call');
      const doc = await vscode.workspace.openTextDocument(uri);
      await vscode.window.showTextDocument(doc, { preview: true, preserveFocus: false });
      return doc;
    }),
  ];
}
