// Worker lifecycle commands: Start / Stop / Restart Worker, Try Locally, Connect Environment, Select Host, Show
// Worker Log. Each accepts a host tree node (context menus) or acts on the selected host (palette). Starting is
// refused in Restricted Mode (untrusted workspaces) with an explanation.
import * as vscode from 'vscode';
import os from 'node:os';
import path from 'node:path';
import type { HostRegistry } from '../hosts';
import type { PerimeterNode } from '../views/trees';
import * as settings from '../settings';
import { storeEnvironmentKey, getEnvironmentKey } from '../secrets';
import { validateKeyInput, validateEnvironmentId } from '../validation';
import { readSshConfigHosts, validateHost, SshInputError } from '../launcher/ssh';
import type { WorkerSettings } from '../launcher/workerHost';

export interface WorkerCommandDeps {
  context: vscode.ExtensionContext;
  registry: HostRegistry;
  output: vscode.LogOutputChannel;
}

function hostIdOf(registry: HostRegistry, node?: PerimeterNode | string): string {
  if (typeof node === 'string') return node;
  return node && 'hostId' in node ? node.hostId : registry.selectedHostId();
}

export function requireTrust(action: string): boolean {
  if (vscode.workspace.isTrusted) return true;
  void vscode.window.showWarningMessage(`Perimeter cannot ${action} in Restricted Mode: a worker runs code on this machine. Trust the workspace to enable it.`, 'Manage Workspace Trust')
    .then((choice) => { if (choice) void vscode.commands.executeCommand('workbench.trust.manage'); });
  return false;
}

async function startOn(deps: WorkerCommandDeps, hostId: string, mode: WorkerSettings['mode']): Promise<boolean> {
  const sup = deps.registry.get(hostId);
  if (!sup) { void vscode.window.showErrorMessage(`Perimeter: unknown host ${hostId}`); return false; }
  try {
    await vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: `Perimeter: starting the worker on ${sup.host.label}…` },
      () => sup.start(settings.workerSettings(mode)));
    return true;
  } catch (err) {
    deps.output.error(`[${sup.host.label}] start failed: ${(err as Error).message}`);
    void vscode.window.showErrorMessage(`Perimeter: could not start the worker on ${sup.host.label}: ${(err as Error).message}`, 'Show Worker Log')
      .then((c) => { if (c) deps.output.show(true); });
    return false;
  }
}

export function registerWorkerCommands(deps: WorkerCommandDeps): vscode.Disposable[] {
  const { context, registry, output } = deps;
  const cmd = (id: string, fn: (...args: any[]) => unknown) => vscode.commands.registerCommand(id, fn);

  const connectEnvironment = async (): Promise<boolean> => {
    const id = await vscode.window.showInputBox({
      title: 'Perimeter: Connect Environment (1/2)', prompt: 'The ID of your self_hosted environment (stored in the perimeter.environmentId setting)',
      value: settings.environmentId(), ignoreFocusOut: true, validateInput: validateEnvironmentId,
    });
    if (id === undefined) return false;
    const key = await vscode.window.showInputBox({
      title: 'Perimeter: Connect Environment (2/2)', prompt: 'The environment key (kept in VS Code\'s secret storage, sent to the worker over stdin only)',
      password: true, ignoreFocusOut: true, validateInput: validateKeyInput,
    });
    if (key === undefined) return false;
    await vscode.workspace.getConfiguration('perimeter').update('environmentId', id.trim(), vscode.ConfigurationTarget.Global);
    await storeEnvironmentKey(context, key.trim());
    void vscode.window.showInformationMessage(`Perimeter: environment ${id.trim()} connected. Start the worker to serve it.`, 'Start Worker')
      .then((c) => { if (c) void vscode.commands.executeCommand('perimeter.startWorker'); });
    return true;
  };

  return [
    cmd('perimeter.startWorker', async (node?: PerimeterNode | string) => {
      if (!requireTrust('start a worker')) return false;
      if (!settings.environmentId() || !(await getEnvironmentKey(context))) {
        const choice = await vscode.window.showWarningMessage('Perimeter: no environment is connected yet.', 'Connect Environment', 'Try Locally');
        if (choice === 'Connect Environment') { if (!(await connectEnvironment())) return false; }
        else if (choice === 'Try Locally') return vscode.commands.executeCommand('perimeter.tryLocally', node);
        else return false;
      }
      return startOn(deps, hostIdOf(registry, node), 'environment');
    }),
    cmd('perimeter.tryLocally', async (node?: PerimeterNode | string) => {
      if (!requireTrust('start a worker')) return false;
      const ok = await startOn(deps, hostIdOf(registry, node), 'localQueue');
      if (ok) void vscode.commands.executeCommand('perimeter.sessions.focus');
      return ok;
    }),
    cmd('perimeter.stopWorker', async (node?: PerimeterNode | string) => {
      const sup = registry.get(hostIdOf(registry, node));
      if (!sup) return false;
      try {
        await vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: `Perimeter: stopping the worker on ${sup.host.label} (in-flight calls finish first)…` },
          () => sup.stop());
        return true;
      } catch (err) {
        void vscode.window.showErrorMessage(`Perimeter: ${(err as Error).message}`);
        return false;
      }
    }),
    cmd('perimeter.restartWorker', async (node?: PerimeterNode | string) => {
      if (!requireTrust('start a worker')) return false;
      const hostId = hostIdOf(registry, node);
      const sup = registry.get(hostId);
      if (!sup) return false;
      const mode: WorkerSettings['mode'] = sup.lastMode ?? (settings.environmentId() && (await getEnvironmentKey(context)) ? 'environment' : 'localQueue');
      try { await sup.stop(); } catch (err) { void vscode.window.showErrorMessage(`Perimeter: ${(err as Error).message}`); return false; }
      return startOn(deps, hostId, mode);
    }),
    cmd('perimeter.showWorkerLog', async (node?: PerimeterNode | string) => {
      const sup = registry.get(hostIdOf(registry, node));
      output.show(true);
      if (sup) {
        const text = await sup.host.logTail().catch((e: Error) => `(could not read the worker log: ${e.message})`);
        output.appendLine(`---- ${sup.host.label}: worker.log (last 200 lines) ----`);
        output.appendLine(text.trimEnd());
      }
    }),
    cmd('perimeter.connectEnvironment', connectEnvironment),
    cmd('perimeter.selectHost', async (typed?: string) => {
      type Pick = vscode.QuickPickItem & { hostId?: string; typeHost?: boolean };
      let host = typed;
      if (host === undefined) {
        const configFile = settings.sshConfigFile() ?? path.join(os.homedir(), '.ssh', 'config');
        const configured = settings.sshHosts();
        const aliases = readSshConfigHosts(configFile).filter((h) => !configured.includes(h));
        const current = registry.selectedHostId();
        const items: Pick[] = [
          { label: '$(vm) This machine', description: current === 'local' ? 'selected' : '', hostId: 'local' },
          ...configured.map((h) => ({ label: `$(remote) ${h}`, description: current === `ssh:${h}` ? 'selected' : 'configured', hostId: `ssh:${h}` })),
          ...aliases.map((h) => ({ label: `$(remote) ${h}`, description: `from ${configFile}`, hostId: `ssh:${h}` })),
          { label: '$(edit) Type an SSH host…', typeHost: true },
        ];
        const pick = await vscode.window.showQuickPick(items, { title: 'Perimeter: Select Host', placeHolder: 'Where should the worker run?' });
        if (!pick) return undefined;
        if (pick.typeHost) {
          host = await vscode.window.showInputBox({
            title: 'Perimeter: SSH host', prompt: 'user@host or an alias from your ssh config (the companion is installed there over SSH)',
            ignoreFocusOut: true, validateInput: (v) => { try { validateHost(v.trim()); return undefined; } catch (e) { return (e as Error).message; } },
          });
          if (host === undefined) return undefined;
        } else if (pick.hostId === 'local') {
          await registry.select('local');
          return 'local';
        } else host = pick.hostId!.slice('ssh:'.length);
      }
      if (host === 'local') { await registry.select('local'); return 'local'; }
      try { validateHost(host.trim()); } catch (e) {
        if (e instanceof SshInputError) { void vscode.window.showErrorMessage(`Perimeter: ${e.message}`); return undefined; }
        throw e;
      }
      host = host.trim();
      const hosts = settings.sshHosts();
      if (!hosts.includes(host)) await vscode.workspace.getConfiguration('perimeter').update('hosts', [...hosts, host], vscode.ConfigurationTarget.Global);
      registry.sync();
      await registry.select(`ssh:${host}`);
      return `ssh:${host}`;
    }),
  ];
}
