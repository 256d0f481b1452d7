// Persisted-path commands: Persist Path… and Stop Persisting Path, from a session / pattern node or the palette.
// Both read the session's current list from the companion, change it, and send the whole list back (`setPersist`);
// the Persisted Files view updates from the `persist.changed` event that follows.
import * as vscode from 'vscode';
import type { HostRegistry } from '../hosts';
import type { PerimeterModel } from '../views/model';
import type { PerimeterNode } from '../views/trees';
import { validatePersistPath } from '../validation';

interface SessionRef { hostId: string; sessionId: string }

async function pickSession(model: PerimeterModel, node?: PerimeterNode | SessionRef): Promise<SessionRef | undefined> {
  if (node && 'sessionId' in node) return { hostId: node.hostId, sessionId: node.sessionId };
  const active = model.sessionList().filter((s) => s.summary.state !== 'ended' && s.summary.state !== 'lost');
  if (active.length === 0) { void vscode.window.showInformationMessage('Perimeter: no active session to change.'); return undefined; }
  if (active.length === 1) return { hostId: active[0]!.hostId, sessionId: active[0]!.summary.sessionId };
  const pick = await vscode.window.showQuickPick(active.map((s) => ({ label: s.summary.sessionId, description: s.hostId, ref: { hostId: s.hostId, sessionId: s.summary.sessionId } })), { title: 'Perimeter: which session?' });
  return pick?.ref;
}

export function registerPersistCommands(registry: HostRegistry, model: PerimeterModel): vscode.Disposable[] {
  const clientOf = (hostId: string) => {
    const c = registry.get(hostId)?.connection;
    if (!c) throw new Error(`the worker on ${hostId} is not connected`);
    return c;
  };
  const current = async (ref: SessionRef) => (await clientOf(ref.hostId).request('getPersist', { sessionId: ref.sessionId })).patterns;
  const report = (err: unknown) => { void vscode.window.showErrorMessage(`Perimeter: ${(err as Error).message}`); return false; };

  return [
    vscode.commands.registerCommand('perimeter.persistPath', async (node?: PerimeterNode | SessionRef, givenPath?: string) => {
      const ref = await pickSession(model, node);
      if (!ref) return false;
      try {
        const patterns = await current(ref);
        const p = givenPath ?? await vscode.window.showInputBox({
          title: `Perimeter: persist a path for session ${ref.sessionId}`, prompt: 'An absolute path in the sandbox; its files are carried to the session\'s next tool calls',
          placeHolder: '/data', ignoreFocusOut: true, validateInput: (v) => validatePersistPath(v, patterns),
        });
        if (p === undefined) return false;
        const problem = validatePersistPath(p, patterns);
        if (problem) { void vscode.window.showErrorMessage(`Perimeter: ${problem}`); return false; }
        model.loadPersist(ref.hostId, await clientOf(ref.hostId).request('setPersist', { sessionId: ref.sessionId, patterns: [...patterns, p.trim()] }));
        return true;
      } catch (err) { return report(err); }
    }),
    vscode.commands.registerCommand('perimeter.stopPersistingPath', async (node?: PerimeterNode | SessionRef, givenPath?: string) => {
      const ref = await pickSession(model, node);
      if (!ref) return false;
      try {
        const patterns = await current(ref);
        const p = node && 'pattern' in node ? node.pattern : givenPath ?? (await vscode.window.showQuickPick(patterns, { title: `Perimeter: stop persisting which path of ${ref.sessionId}?` }));
        if (p === undefined) return false;
        if (!patterns.includes(p)) { void vscode.window.showInformationMessage(`Perimeter: ${p} is not persisted.`); return false; }
        model.loadPersist(ref.hostId, await clientOf(ref.hostId).request('setPersist', { sessionId: ref.sessionId, patterns: patterns.filter((x) => x !== p) }));
        return true;
      } catch (err) { return report(err); }
    }),
  ];
}
