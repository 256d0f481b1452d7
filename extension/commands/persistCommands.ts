// Persisted-file commands. Persist Path… and Stop Persisting Path (from a session / pattern node or the palette) read
// the session's list from the companion, change it and send the whole list back (`setPersist`); stopping asks first,
// since the next call's commit drops the stored files under that path (the Persisted Files view drops them at once).
// Open Persisted File, Compare with Previous Generation, Export to Workspace… and Roll Back to This Generation act on
// persisted files as files (`perimeter-persist:`, read through the control API).
import * as vscode from 'vscode';
import path from 'node:path';
import type { HostRegistry } from '../hosts';
import type { PerimeterModel } from '../views/model';
import { type PerimeterNode, type PersistTree, persistFileUri } from '../views/trees';
import { validatePersistPath } from '../validation';
import type { PersistSource } from '../persist/persistSource';
import { PERSIST_SCHEME, parsePersistUriPath, persistUriPath, guestBase, type PersistRef } from '../persist/persistUri';
import { ExportRefused, badName, destinationState, ensureExportRoot, planExport, writeExported } from '../../companion/protocol/safe-export';

interface SessionRef { hostId: string; sessionId: string }

async function pickSession(model: PerimeterModel, node?: PerimeterNode | SessionRef): Promise<SessionRef | undefined> {
  if (node && 'sessionId' in node) return { hostId: node.hostId, sessionId: node.sessionId };
  const active = model.sessionList().filter((s) => s.summary.state !== 'ended' && s.summary.state !== 'lost');
  if (active.length === 0) { void vscode.window.showInformationMessage('Perimeter: no active session to change.'); return undefined; }
  if (active.length === 1) return { hostId: active[0]!.hostId, sessionId: active[0]!.summary.sessionId };
  const pick = await vscode.window.showQuickPick(active.map((s) => ({ label: s.summary.sessionId, description: s.hostId, ref: { hostId: s.hostId, sessionId: s.summary.sessionId } })), { title: 'Perimeter: which session?' });
  return pick?.ref;
}

export function registerPersistCommands(registry: HostRegistry, model: PerimeterModel, source: PersistSource, tree: PersistTree): vscode.Disposable[] {
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
    vscode.commands.registerCommand('perimeter.stopPersistingPath', async (node?: PerimeterNode | SessionRef, givenPath?: string, confirmed?: boolean) => {
      const ref = await pickSession(model, node);
      if (!ref) return false;
      try {
        const patterns = await current(ref);
        const p = node && 'pattern' in node ? node.pattern : givenPath ?? (await vscode.window.showQuickPick(patterns, { title: `Perimeter: stop persisting which path of ${ref.sessionId}?` }));
        if (p === undefined) return false;
        if (!patterns.includes(p)) { void vscode.window.showInformationMessage(`Perimeter: ${p} is not persisted.`); return false; }
        if (confirmed !== true) {
          const stored = (model.persistOf(ref.hostId, ref.sessionId)?.files ?? []).filter((f) => f.path === p || f.path.startsWith(`${p.replace(/\/$/, '')}/`)).length;
          const answer = await vscode.window.showWarningMessage(`Stop persisting ${p}?`, {
            modal: true,
            detail: `${stored > 0 ? `Its ${stored} stored file${stored === 1 ? '' : 's'} will no longer be placed in the session's sandboxes, and the next call's commit removes ${stored === 1 ? 'it' : 'them'} from the store.` : 'Nothing is stored under it yet.'} Older generations keep ${stored === 1 ? 'it' : 'them'} while they are kept (Roll Back to This Generation).`,
          }, 'Stop Persisting');
          if (answer !== 'Stop Persisting') return false;
        }
        model.loadPersist(ref.hostId, await clientOf(ref.hostId).request('setPersist', { sessionId: ref.sessionId, patterns: patterns.filter((x) => x !== p) }));
        return true;
      } catch (err) { return report(err); }
    }),
    vscode.commands.registerCommand('perimeter.openPersistedFile', async (target?: PerimeterNode | vscode.Uri) => {
      const ref = persistRef(model, target);
      if (!ref) return undefined;
      const doc = await vscode.workspace.openTextDocument(uriOf(ref));
      await vscode.window.showTextDocument(doc, { preview: true });
      return doc;
    }),
    vscode.commands.registerCommand('perimeter.compareWithPreviousGeneration', async (target?: PerimeterNode | vscode.Uri) => {
      const ref = persistRef(model, target ?? vscode.window.activeTextEditor?.document.uri);
      if (!ref) { void vscode.window.showInformationMessage('Perimeter: choose a persisted file (Persisted Files view) to compare.'); return undefined; }
      try {
        const { generations } = await source.generations(ref.hostId, ref.sessionId);
        const older = generations.map((g) => g.generation).filter((g) => g < ref.generation).sort((a, b) => b - a);
        const name = guestBase(ref.guestPath);
        if (older.length === 0) {
          void vscode.window.showInformationMessage(`Perimeter: no generation older than ${ref.generation} is kept for this session.`);
          return undefined;
        }
        // The previous version: the newest older generation in which the file differs (calls that left it alone
        // made generations with the same content).
        const now = (await source.index(ref.hostId, ref.sessionId, ref.generation)).entries.get(ref.guestPath);
        let previous: number | undefined;
        for (const g of older) {
          const before = (await source.index(ref.hostId, ref.sessionId, g)).entries.get(ref.guestPath);
          if (before?.type !== 'file') {
            void vscode.window.showInformationMessage(`Perimeter: ${ref.guestPath} did not exist in generation ${g}; it was added in a later one and has not changed since.`);
            return undefined;
          }
          if (before.sha256 !== now?.sha256) { previous = g; break; }
        }
        if (previous === undefined) {
          void vscode.window.showInformationMessage(`Perimeter: ${ref.guestPath} is the same in every kept generation (${[ref.generation, ...older].join(', ')}).`);
          return undefined;
        }
        const left = uriOf({ ...ref, generation: previous });
        await vscode.commands.executeCommand('vscode.diff', left, uriOf(ref), `${name} (generation ${previous} ↔ ${ref.generation})`);
        return { left: left.toString(), right: uriOf(ref).toString() };
      } catch (err) { report(err); return undefined; }
    }),
    vscode.commands.registerCommand('perimeter.exportToWorkspace', async (target?: PerimeterNode | vscode.Uri, givenFolder?: string, overwrite?: boolean) => {
      const ref = exportRef(model, target ?? vscode.window.activeTextEditor?.document.uri);
      if (!ref) { void vscode.window.showInformationMessage('Perimeter: choose a persisted file or generation (Persisted Files view) to export.'); return undefined; }
      const folder = vscode.workspace.workspaceFolders?.[0];
      if (!folder || folder.uri.scheme !== 'file') { void vscode.window.showErrorMessage('Perimeter: open a folder on this machine to export into.'); return undefined; }
      try {
        const index = await source.index(ref.hostId, ref.sessionId, ref.generation);
        const plan = planExport(index.entries.values(), ref.guestPath);
        if (plan.files.length === 0) { void vscode.window.showInformationMessage(`Perimeter: nothing to export under ${ref.guestPath}${plan.skipped.length ? ` (${plan.skipped.map((x) => `${x.guestPath}: ${x.reason}`).join('; ')})` : ''}.`); return undefined; }
        const folderName = givenFolder ?? await vscode.window.showInputBox({
          title: `Perimeter: export ${plan.files.length === 1 ? plan.files[0]!.guestPath : `${plan.files.length} files of ${ref.guestPath}`} (generation ${ref.generation})`,
          prompt: `A folder in ${folder.name} (relative; empty: the workspace folder itself)`, value: ref.guestPath === '/' ? `perimeter-${ref.sessionId}-gen${ref.generation}` : '',
          validateInput: (v) => exportFolderProblem(v),
        });
        if (folderName === undefined) return undefined;
        const problem = exportFolderProblem(folderName);
        if (problem) { void vscode.window.showErrorMessage(`Perimeter: ${problem}`); return undefined; }
        const root = await ensureExportRoot(folder.uri.fsPath, folderName);
        const states = await Promise.all(plan.files.map(async (f) => ({ f, state: await destinationState(path.join(root, f.relative)) })));
        const existing = states.filter((x) => x.state === 'file').map((x) => x.f.relative);
        let replace = overwrite === true;
        if (existing.length > 0 && overwrite === undefined) {
          const answer = await vscode.window.showWarningMessage(`${existing.length} file${existing.length === 1 ? '' : 's'} already exist${existing.length === 1 ? 's' : ''} in ${folderName || folder.name}. Overwrite?`,
            { modal: true, detail: existing.slice(0, 10).join('\n') + (existing.length > 10 ? `\n… ${existing.length - 10} more` : '') }, 'Overwrite', 'Skip Existing');
          if (answer === undefined) return undefined;
          replace = answer === 'Overwrite';
        }
        const written: string[] = [];
        const skipped = plan.skipped.map((x) => `${x.guestPath}: ${x.reason}`);
        for (const f of plan.files) {
          try {
            await writeExported(root, f.relative, source.chunks(ref.hostId, ref.sessionId, ref.generation, f.guestPath), replace);
            written.push(f.relative);
          } catch (err) {
            if (!(err instanceof ExportRefused)) throw err;
            skipped.push(err.message);
          }
        }
        const where = folderName ? `${folder.name}/${folderName}` : folder.name;
        const msg = `Perimeter: exported ${written.length} file${written.length === 1 ? '' : 's'} to ${where}${skipped.length ? `; skipped ${skipped.length}: ${skipped.slice(0, 3).join('; ')}${skipped.length > 3 ? '; …' : ''}` : ''}.`;
        if (skipped.length) void vscode.window.showWarningMessage(msg); else void vscode.window.showInformationMessage(msg);
        return { written, skipped };
      } catch (err) { report(err); return undefined; }
    }),
    vscode.commands.registerCommand('perimeter.rollBackToGeneration', async (node?: PerimeterNode, confirmed?: boolean) => {
      if (!node || node.kind !== 'generation') { void vscode.window.showInformationMessage('Perimeter: choose a generation under Generations in the Persisted Files view.'); return false; }
      if (confirmed !== true) {
        const answer = await vscode.window.showWarningMessage(`Roll back the persisted files of this session to generation ${node.generation}?`, {
          modal: true, detail: 'The next calls get the files (and shell state) of that generation. It becomes a new generation; the current one stays kept while the store keeps generations, so this can be undone the same way.',
        }, 'Roll Back');
        if (answer !== 'Roll Back') return false;
      }
      try {
        const state = await clientOf(node.hostId).request('rollbackPersist', { sessionId: node.sessionId, generation: node.generation });
        tree.forget(node.hostId, node.sessionId);
        model.loadPersist(node.hostId, state);
        void vscode.window.showInformationMessage(`Perimeter: rolled back to generation ${node.generation} (now generation ${state.generation}).`);
        return true;
      } catch (err) { return report(err); }
    }),
  ];
}

const uriOf = (ref: PersistRef) => vscode.Uri.from({ scheme: PERSIST_SCHEME, path: persistUriPath(ref) });

/** The persisted file a command was given: a file node (current or of a generation) or a `perimeter-persist:` URI. */
function persistRef(model: PerimeterModel, target?: PerimeterNode | vscode.Uri): PersistRef | null {
  if (target instanceof vscode.Uri) return target.scheme === PERSIST_SCHEME ? parsePersistUriPath(target.path) : null;
  if (!target || target.kind !== 'file') return null;
  return parsePersistUriPath(persistFileUri(target, model.persistOf(target.hostId, target.sessionId)?.generation ?? 0).path);
}

/** What Export to Workspace… copies: a file, or a whole generation (its root). */
function exportRef(model: PerimeterModel, target?: PerimeterNode | vscode.Uri): PersistRef | null {
  if (target && !(target instanceof vscode.Uri) && target.kind === 'generation') return { hostId: target.hostId, sessionId: target.sessionId, generation: target.generation, guestPath: '/' };
  return persistRef(model, target);
}

function exportFolderProblem(v: string): string | null {
  if (v.startsWith('/')) return 'give a folder relative to the workspace folder';
  for (const part of v.split('/').filter(Boolean)) { const bad = badName(part); if (bad) return `"${part}": ${bad}`; }
  return null;
}
