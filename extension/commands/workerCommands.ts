// Worker lifecycle commands: Start / Stop / Restart Worker, Try Locally, Connect Environment, Forget Key, Select Host,
// Show Worker Log. Each accepts a host id or a host tree node (context menus) or acts on the selected host (palette,
// and the Worker view's title bar, whose own commands ignore the row that happens to have focus). Starting is refused
// in Restricted Mode (untrusted workspaces) with an explanation. Invariants:
// - A start never silently does nothing: a worker already running in the same mode is said so, one in another mode
//   is offered a restart in the wanted mode.
// - Connect Environment stores the ID and key only after the API accepted them (checked from the selected host, by
//   its companion, with the SDK), or when the user saves them explicitly although the API could not be asked.
// - Select Host on an SSH host connects to it and checks it (installing or upgrading the companion as its own step).
import * as vscode from 'vscode';
import os from 'node:os';
import path from 'node:path';
import type { PerimeterNode } from '../views/trees';
import * as settings from '../settings';
import { storeEnvironmentKey, getEnvironmentKey, deleteEnvironmentKey } from '../secrets';
import { validateKeyInput, validateEnvironmentId } from '../validation';
import { readSshConfigHosts, validateHost, SshInputError } from '../launcher/ssh';
import { HostKeyError, type WorkerSettings } from '../launcher/workerHost';
import { WorkerModeConflict, type HostSupervisor } from '../launcher/supervisor';
import { SshHost } from '../launcher/sshHost';
import type { EnvironmentCheck } from '../../companion/protocol/environment';
import { hostIdOf, promptHostKey, runDoctorOn, type HostCommandDeps } from './hostCommands';

export interface WorkerCommandDeps extends HostCommandDeps {
  context: vscode.ExtensionContext;
}

export function requireTrust(action: string): boolean {
  if (vscode.workspace.isTrusted) return true;
  void vscode.window.showWarningMessage(`Perimeter cannot ${action} in Restricted Mode: a worker runs code on this machine. Trust the workspace to enable it.`, 'Manage Workspace Trust')
    .then((choice) => { if (choice) void vscode.commands.executeCommand('workbench.trust.manage'); });
  return false;
}

const modeName = (mode: WorkerSettings['mode']) => mode === 'localQueue' ? 'Try Locally (the local dev queue)' : 'for the environment';

/** Starts (or restarts) with a progress notification that names each step the host takes. */
function withSteps<T>(sup: HostSupervisor, title: string, work: () => Promise<T>): Thenable<T> {
  return vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title }, async (progress) => {
    const steps = sup.host.onStep((_step, detail) => progress.report({ message: `${detail}…` }));
    try { return await work(); } finally { steps.dispose(); }
  });
}

async function startOn(deps: WorkerCommandDeps, hostId: string, mode: WorkerSettings['mode']): Promise<boolean> {
  const sup = deps.registry.get(hostId);
  if (!sup) { void vscode.window.showErrorMessage(`Perimeter: unknown host ${hostId}`); return false; }
  for (;;) {
    try {
      const outcome = await withSteps(sup, `Perimeter: starting the worker on ${sup.host.label}…`, () => sup.start(settings.workerSettings(mode)));
      if (outcome === 'alreadyRunning') void vscode.window.showInformationMessage(`Perimeter: the worker on ${sup.host.label} already runs ${modeName(mode)}.`);
      return true;
    } catch (err) {
      if (err instanceof WorkerModeConflict) return offerRestart(deps, sup, mode, err);
      if (err instanceof HostKeyError && sup.host instanceof SshHost && await promptHostKey(sup.host, err)) continue;
      if (err instanceof HostKeyError) return false;
      deps.output.error(`[${sup.host.label}] start failed: ${(err as Error).message}`);
      void vscode.window.showErrorMessage(`Perimeter: could not start the worker on ${sup.host.label}: ${(err as Error).message}`, 'Show Worker Log')
        .then((c) => { if (c) deps.output.show(true); });
      return false;
    }
  }
}

/** A worker of another mode runs: say so, and restart it in the wanted mode only when the user says so. */
async function offerRestart(deps: WorkerCommandDeps, sup: HostSupervisor, mode: WorkerSettings['mode'], conflict: WorkerModeConflict): Promise<boolean> {
  const action = mode === 'localQueue' ? 'Restart in Local Mode' : 'Restart for the Environment';
  const running = conflict.running ? `already runs ${modeName(conflict.running)}` : 'already runs a worker started elsewhere';
  const wanted = mode === 'localQueue' ? 'in local mode (Try Locally)' : 'for the environment';
  const choice = await vscode.window.showWarningMessage(
    `Perimeter: ${sup.host.label} ${running}. Restart it ${wanted}? Its in-flight tool calls finish first.`, action);
  if (choice !== action) return false;
  try {
    await withSteps(sup, `Perimeter: restarting the worker on ${sup.host.label}…`, () => sup.restart(settings.workerSettings(mode)));
    return true;
  } catch (err) {
    void vscode.window.showErrorMessage(`Perimeter: could not restart the worker on ${sup.host.label}: ${(err as Error).message}`, 'Show Worker Log')
      .then((c) => { if (c) deps.output.show(true); });
    return false;
  }
}

/** What Connect Environment says about a check that did not pass, and whether saving anyway is offered. */
function verdictText(c: EnvironmentCheck, hostLabel: string): { text: string; saveAnyway: boolean } {
  switch (c.verdict) {
    case 'key_refused': return { text: `the API refused the key for environment ${c.environmentId} (${c.detail}). Check that the key belongs to this environment and was not revoked.`, saveAnyway: false };
    case 'not_found': return { text: `the API does not know environment ${c.environmentId} (${c.detail}). Check the ID in the Claude Console.`, saveAnyway: false };
    case 'unreachable': return { text: `the API at ${c.baseUrl} could not be reached from ${hostLabel} (${c.detail}), so the ID and key are not verified.`, saveAnyway: true };
    case 'service_error': return { text: `the API answered with an error (${c.detail}), so the ID and key are not verified.`, saveAnyway: true };
    case 'ok': return { text: '', saveAnyway: false };
  }
}

export function registerWorkerCommands(deps: WorkerCommandDeps): vscode.Disposable[] {
  const { context, registry, output } = deps;
  const cmd = (id: string, fn: (...args: any[]) => unknown) => vscode.commands.registerCommand(id, fn);

  const connectEnvironment = async (): Promise<boolean> => {
    let id = settings.environmentId();
    for (;;) {
      const typedId = await vscode.window.showInputBox({
        title: 'Perimeter: Connect Environment (1/2)', prompt: 'The ID of your self_hosted environment (stored in the perimeter.environmentId setting)',
        value: id, ignoreFocusOut: true, validateInput: validateEnvironmentId,
      });
      if (typedId === undefined) return false;
      id = typedId.trim();
      const typedKey = await vscode.window.showInputBox({
        title: 'Perimeter: Connect Environment (2/2)', prompt: 'The environment key (kept in VS Code\'s secret storage, sent to the worker over stdin only)',
        password: true, ignoreFocusOut: true, validateInput: validateKeyInput,
      });
      if (typedKey === undefined) return false;
      const key = typedKey.trim();
      const sup = registry.get(registry.selectedHostId()) ?? registry.get('local')!;
      let check: EnvironmentCheck | null = null;
      let failure = '';
      for (;;) {
        try {
          check = await withSteps(sup, `Perimeter: checking environment ${id} with the API from ${sup.host.label}…`, () => sup.host.checkEnvironment(id, key));
        } catch (err) {
          if (err instanceof HostKeyError && sup.host instanceof SshHost && await promptHostKey(sup.host, err)) continue;
          failure = `the check could not run on ${sup.host.label}: ${(err as Error).message}`;
        }
        break;
      }
      if (check?.verdict !== 'ok') {
        const { text, saveAnyway } = check ? verdictText(check, sup.host.label) : { text: failure, saveAnyway: true };
        const choice = await vscode.window.showErrorMessage(`Perimeter: not connected: ${text}`, { modal: true }, 'Try Again', ...(saveAnyway ? ['Save Without Checking'] : []));
        if (choice === 'Try Again') continue;
        if (choice !== 'Save Without Checking') return false;
      }
      await vscode.workspace.getConfiguration('perimeter').update('environmentId', id, vscode.ConfigurationTarget.Global);
      await storeEnvironmentKey(context, key);
      const state = check?.verdict === 'ok' ? `connected (the API accepted the key; ${check.queued ?? 0} work item${check.queued === 1 ? '' : 's'} queued)` : 'saved, not verified';
      void vscode.window.showInformationMessage(`Perimeter: environment ${id} ${state}. Start the worker to serve it.`, 'Start Worker')
        .then((c) => { if (c) void vscode.commands.executeCommand('perimeter.startWorker'); });
      return true;
    }
  };

  const stopOn = async (hostId: string): Promise<boolean> => {
    const sup = registry.get(hostId);
    if (!sup) return false;
    try {
      await vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: `Perimeter: stopping the worker on ${sup.host.label} (in-flight calls finish first)…` },
        () => sup.stop());
      return true;
    } catch (err) {
      void vscode.window.showErrorMessage(`Perimeter: ${(err as Error).message}`);
      return false;
    }
  };

  const startWorker = async (hostId: string): Promise<boolean> => {
    if (!requireTrust('start a worker')) return false;
    if (!settings.environmentId() || !(await getEnvironmentKey(context))) {
      const choice = await vscode.window.showWarningMessage('Perimeter: no environment is connected yet.', 'Connect Environment', 'Try Locally');
      if (choice === 'Connect Environment') { if (!(await connectEnvironment())) return false; }
      else if (choice === 'Try Locally') return (await vscode.commands.executeCommand<boolean>('perimeter.tryLocally', hostId)) ?? false;
      else return false;
    }
    return startOn(deps, hostId, 'environment');
  };

  /** Adds an SSH host to the settings (when new), selects it, and connects to and checks it. */
  const selectSshHost = async (host: string): Promise<string> => {
    const hosts = settings.sshHosts();
    if (!hosts.includes(host)) await vscode.workspace.getConfiguration('perimeter').update('hosts', [...hosts, host], vscode.ConfigurationTarget.Global);
    registry.sync();
    const hostId = `ssh:${host}`;
    await registry.select(hostId);
    const sup = registry.get(hostId);
    if (sup) await runDoctorOn(deps, sup, { quietWhenReady: true });
    return hostId;
  };

  return [
    cmd('perimeter.startWorker', (node?: PerimeterNode | string) => startWorker(hostIdOf(registry, node))),
    cmd('perimeter.startSelectedWorker', () => startWorker(registry.selectedHostId())),
    cmd('perimeter.tryLocally', async (node?: PerimeterNode | string) => {
      if (!requireTrust('start a worker')) return false;
      const ok = await startOn(deps, hostIdOf(registry, node), 'localQueue');
      if (ok) void vscode.commands.executeCommand('perimeter.sessions.focus');
      return ok;
    }),
    cmd('perimeter.stopWorker', (node?: PerimeterNode | string) => stopOn(hostIdOf(registry, node))),
    cmd('perimeter.stopSelectedWorker', () => stopOn(registry.selectedHostId())),
    cmd('perimeter.restartWorker', async (node?: PerimeterNode | string) => {
      if (!requireTrust('start a worker')) return false;
      const hostId = hostIdOf(registry, node);
      const sup = registry.get(hostId);
      if (!sup) return false;
      const mode: WorkerSettings['mode'] = sup.lastMode ?? sup.runningMode ?? (settings.environmentId() && (await getEnvironmentKey(context)) ? 'environment' : 'localQueue');
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
    cmd('perimeter.forgetKey', async () => {
      if (!(await getEnvironmentKey(context))) { void vscode.window.showInformationMessage('Perimeter: no environment key is stored.'); return false; }
      const forget = 'Forget Key';
      const choice = await vscode.window.showWarningMessage('Perimeter: forget the environment key?', {
        modal: true, detail: 'It is deleted from VS Code\'s secret storage. A running worker keeps serving until it is stopped; the next start needs Connect Environment.',
      }, forget);
      if (choice !== forget) return false;
      await deleteEnvironmentKey(context);
      void vscode.window.showInformationMessage('Perimeter: the environment key was deleted from secret storage.');
      return true;
    }),
    cmd('perimeter.selectHost', async (arg?: unknown) => {
      // A string is a host to select (a host id, or an SSH host as typed); anything else (nothing from the palette, or
      // the focused row VS Code hands to a view title action) opens the picker.
      let host = typeof arg === 'string' ? arg.trim() : undefined;
      if (host !== undefined && registry.get(host)) {
        if (host === 'local') { await registry.select('local'); return 'local'; }
        return selectSshHost(host.slice('ssh:'.length));
      }
      if (host === undefined) {
        type Pick = vscode.QuickPickItem & { hostId?: string; typeHost?: boolean };
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
          host = (await vscode.window.showInputBox({
            title: 'Perimeter: SSH host', prompt: 'user@host or an alias from your ssh config (the companion is installed there over SSH)',
            ignoreFocusOut: true, validateInput: (v) => { try { validateHost(v.trim()); return undefined; } catch (e) { return (e as Error).message; } },
          }))?.trim();
          if (host === undefined) return undefined;
        } else if (pick.hostId === 'local') {
          await registry.select('local');
          return 'local';
        } else host = pick.hostId!.slice('ssh:'.length);
      }
      if (host === 'local') { await registry.select('local'); return 'local'; }
      try { validateHost(host); } catch (e) {
        if (e instanceof SshInputError) { void vscode.window.showErrorMessage(`Perimeter: ${e.message}`); return undefined; }
        throw e;
      }
      return selectSshHost(host);
    }),
  ];
}
