// Host commands: Run Doctor (a readable report per host, with the fix for each problem), Reconnect (re-open the way
// to a host and attach to its worker, never restarting it), Remove Host, and the checks Select Host runs on an SSH
// host (connect, install or upgrade the companion as its own step, then the doctor). A host key ssh does not know is
// shown with its fingerprints and trusted only when the user says so; a changed key is never trusted from here.
import * as vscode from 'vscode';
import type { HostRegistry } from '../hosts';
import type { HostSupervisor } from '../launcher/supervisor';
import type { PerimeterNode } from '../views/trees';
import type { DoctorReport } from '../../companion/protocol/doctor';
import type { DoctorReportProvider } from '../documents/doctorProvider';
import { doctorFacts, parseDoctorOutput, summarizeDoctor } from '../launcher/doctor';
import { HostKeyError, HostUnreachableError } from '../launcher/workerHost';
import { SshHost } from '../launcher/sshHost';

export interface HostCommandDeps {
  registry: HostRegistry;
  output: vscode.LogOutputChannel;
  doctorReports: DoctorReportProvider;
}

/** The host a command acts on: a host id, a tree node's host, else the selected host. */
export function hostIdOf(registry: HostRegistry, node?: PerimeterNode | string): string {
  if (typeof node === 'string') return node;
  return node && typeof node === 'object' && 'hostId' in node ? node.hostId : registry.selectedHostId();
}

export async function applyDoctorContext(report: DoctorReport): Promise<void> {
  const facts = doctorFacts(report);
  await vscode.commands.executeCommand('setContext', 'perimeter.noKvm', facts.kvm === false);
  await vscode.commands.executeCommand('setContext', 'perimeter.templateMissing', facts.template === false);
}

/**
 * Asks the user to compare the host key's fingerprints with the host's own before trusting it (a first connection).
 * Resolves true once the key was added to known_hosts.
 */
export async function promptHostKey(host: SshHost, err: HostKeyError): Promise<boolean> {
  if (err.changed) {
    void vscode.window.showErrorMessage(`Perimeter: ${err.message}`, { modal: true });
    return false;
  }
  if (err.fingerprints.length === 0) {
    void vscode.window.showErrorMessage(`Perimeter: ${err.message}, and its key could not be read from here. Connect once in a terminal (ssh ${host.label}) to verify and accept it.`);
    return false;
  }
  const trust = 'Trust Host Key';
  const choice = await vscode.window.showWarningMessage(`Perimeter: first connection to ${host.label}. Verify its host key before you trust it.`, {
    modal: true,
    detail: [`${host.label} offers these host keys:`, ...err.fingerprints.map((f) => `  ${f}`), '',
      'Compare them with the host\'s own, from its console or its administrator (on the host: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub).',
      'Trust them only if they match: a different key means you are not talking to that host.'].join('\n'),
  }, trust);
  if (choice !== trust) return false;
  host.trustHostKey();
  return true;
}

/**
 * Runs the doctor on a host with a progress notification that names each step (connecting, installing or upgrading
 * the companion, checking), answers a new host key prompt, publishes the report document and shows one toast that
 * agrees with it (every failed check named). `quietWhenReady`: no toast when nothing failed (Select Host).
 */
export async function runDoctorOn(deps: HostCommandDeps, sup: HostSupervisor, opts: { quietWhenReady?: boolean; openReport?: boolean } = {}): Promise<DoctorReport | undefined> {
  for (;;) {
    try {
      const report = await vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: `Perimeter: ${sup.host.label}` }, async (progress) => {
        progress.report({ message: `checking ${sup.host.label}…` });
        const steps = sup.host.onStep((_step, detail) => progress.report({ message: `${detail}…` }));
        try { return parseDoctorOutput(await sup.host.runCli('doctor')); } finally { steps.dispose(); }
      });
      if (sup.hostId === 'local') await applyDoctorContext(report);
      const uri = deps.doctorReports.publish(sup.hostId, sup.host.label, report);
      if (opts.openReport) await vscode.window.showTextDocument(await vscode.workspace.openTextDocument(uri), { preview: true });
      void announceDoctor(sup, report, uri, opts.quietWhenReady ?? false);
      return report;
    } catch (err) {
      if (err instanceof HostKeyError && sup.host instanceof SshHost && await promptHostKey(sup.host, err)) continue;
      if (!(err instanceof HostKeyError)) {
        const what = err instanceof HostUnreachableError ? (err as Error).message : `doctor on ${sup.host.label} failed: ${(err as Error).message}`;
        deps.output.error(`[${sup.host.label}] ${what}`);
        void vscode.window.showErrorMessage(`Perimeter: ${what}`, 'Show Worker Log').then((c) => { if (c) deps.output.show(true); });
      }
      return undefined;
    }
  }
}

async function announceDoctor(sup: HostSupervisor, report: DoctorReport, uri: vscode.Uri, quietWhenReady: boolean): Promise<void> {
  const s = summarizeDoctor(report);
  const failed = [...s.errors, ...s.warnings];
  if (failed.length === 0 && quietWhenReady) return;
  const text = `Perimeter doctor on ${sup.host.label}: ${s.headline}${failed.length ? ` (${failed.map((c) => c.name).join(', ')})` : ''}.`;
  const actions = ['Show Report', ...(s.errors.some((c) => c.name === 'template') ? ['Build Template'] : [])];
  const show = s.errors.length ? vscode.window.showErrorMessage : failed.length ? vscode.window.showWarningMessage : vscode.window.showInformationMessage;
  const choice = await show(text, ...actions);
  if (choice === 'Show Report') await vscode.window.showTextDocument(await vscode.workspace.openTextDocument(uri), { preview: true });
  else if (choice === 'Build Template') await vscode.commands.executeCommand('perimeter.buildTemplate', sup.hostId);
}

export function registerHostCommands(deps: HostCommandDeps): vscode.Disposable[] {
  const { registry } = deps;
  return [
    vscode.commands.registerCommand('perimeter.runDoctor', async (node?: PerimeterNode | string) => {
      const sup = registry.get(hostIdOf(registry, node));
      if (!sup) return undefined;
      return runDoctorOn(deps, sup, { openReport: true });
    }),
    vscode.commands.registerCommand('perimeter.reconnect', async (node?: PerimeterNode | string) => {
      const sup = registry.get(hostIdOf(registry, node));
      if (!sup) return false;
      for (;;) {
        // The attempt's progress shows on the Worker view, not as a toast: the outcome is a notice of its own, and VS Code
        // drops a toast that arrives among several others in under a second (its spam guard), which hid that notice.
        const ok = await vscode.window.withProgress({ location: { viewId: 'perimeter.worker' }, title: `Perimeter: reconnecting to the worker on ${sup.host.label}…` },
          () => sup.reconnect());
        if (ok) return true;
        const problem = registry.get(sup.hostId) === sup ? sup.lastError : null;
        if (problem instanceof HostKeyError && sup.host instanceof SshHost && await promptHostKey(sup.host, problem)) continue;
        return false;
      }
    }),
    vscode.commands.registerCommand('perimeter.removeHost', async (node?: PerimeterNode | string) => {
      let hostId = typeof node === 'string' || (node && typeof node === 'object' && 'hostId' in node) ? hostIdOf(registry, node) : undefined;
      if (hostId === undefined) {
        const remote = registry.all().filter((s) => s.host.remote);
        if (remote.length === 0) { void vscode.window.showInformationMessage('Perimeter: there is no SSH host to remove.'); return false; }
        const pick = await vscode.window.showQuickPick(remote.map((s) => ({ label: `$(remote) ${s.host.label}`, hostId: s.hostId })), { title: 'Perimeter: Remove Host' });
        if (!pick) return false;
        hostId = pick.hostId;
      }
      const sup = registry.get(hostId);
      if (!sup || !sup.host.remote) { void vscode.window.showErrorMessage(`Perimeter: ${hostId} is not an SSH host Perimeter can remove.`); return false; }
      const stopAndRemove = 'Stop Worker and Remove';
      const keepRunning = 'Remove, Leave It Running';
      const choices = sup.isRunning ? [stopAndRemove, keepRunning] : ['Remove'];
      const choice = await vscode.window.showWarningMessage(`Perimeter: remove ${sup.host.label}?`, {
        modal: true,
        detail: `${sup.isRunning ? `A worker runs on ${sup.host.label}. ` : ''}Perimeter forgets the host (it leaves your ssh config and the companion installed there as they are).`,
      }, ...choices);
      if (!choice) return false;
      if (choice === stopAndRemove) {
        try {
          await vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: `Perimeter: stopping the worker on ${sup.host.label}…` }, () => sup.stop());
        } catch (err) {
          void vscode.window.showErrorMessage(`Perimeter: ${(err as Error).message}`);
          return false;
        }
      }
      await registry.remove(hostId);
      return true;
    }),
  ];
}
