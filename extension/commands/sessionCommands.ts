// Session commands (Sessions view context menus and the palette): Open Transcript, Copy Session ID, Filter Sessions…
// and Clear Session Filter, Clear Finished History. Sessions cleared from the history are remembered per host in
// globalState (not a secret, not a workspace setting), so re-reading the journal does not bring them back.
import * as vscode from 'vscode';
import type { PerimeterModel, SessionEntry } from '../views/model';
import type { PerimeterNode, SessionsTree } from '../views/trees';
import { transcriptUri } from '../documents/transcriptProvider';

const FORGOTTEN = 'perimeter.forgottenSessions';
const FILTERED = 'perimeter.sessionsFiltered';

interface SessionRef { hostId: string; sessionId: string }

async function pickSession(model: PerimeterModel, title: string, node?: PerimeterNode | SessionRef): Promise<SessionEntry | undefined> {
  if (node && 'sessionId' in node) return model.session(node.hostId, node.sessionId);
  const all = model.sessionList();
  if (all.length === 0) { void vscode.window.showInformationMessage('Perimeter: no session yet.'); return undefined; }
  if (all.length === 1) return all[0];
  const pick = await vscode.window.showQuickPick(all.map((s) => ({
    label: s.summary.title || s.summary.sessionId, description: `${s.summary.sessionId} · ${s.summary.state}`, detail: model.host(s.hostId)?.label, entry: s,
  })), { title, matchOnDescription: true });
  return pick?.entry;
}

/** Forgets the sessions cleared in earlier windows (call once the hosts exist in the model). */
export function restoreForgottenSessions(context: vscode.ExtensionContext, model: PerimeterModel): void {
  const stored = context.globalState.get<Record<string, string[]>>(FORGOTTEN) ?? {};
  for (const [hostId, ids] of Object.entries(stored)) model.forgetSessions(hostId, ids);
}

export function registerSessionCommands(context: vscode.ExtensionContext, model: PerimeterModel, tree: SessionsTree, view: vscode.TreeView<PerimeterNode>): vscode.Disposable[] {
  const showFilter = () => {
    view.description = tree.filter ? `filter: ${tree.filter}` : undefined;
    void vscode.commands.executeCommand('setContext', FILTERED, tree.filter !== '');
  };
  return [
    vscode.commands.registerCommand('perimeter.openTranscript', async (node?: PerimeterNode | SessionRef) => {
      const s = await pickSession(model, 'Perimeter: open the transcript of which session?', node);
      if (!s) return undefined;
      const doc = await vscode.workspace.openTextDocument(transcriptUri({ hostId: s.hostId, sessionId: s.summary.sessionId }, s.summary.title));
      await vscode.window.showTextDocument(doc, { preview: false });
      return doc;
    }),
    vscode.commands.registerCommand('perimeter.copySessionId', async (node?: PerimeterNode | SessionRef) => {
      const s = await pickSession(model, 'Perimeter: copy the ID of which session?', node);
      if (!s) return undefined;
      await vscode.env.clipboard.writeText(s.summary.sessionId);
      vscode.window.setStatusBarMessage(`Perimeter: copied ${s.summary.sessionId}`, 3000);
      return s.summary.sessionId;
    }),
    vscode.commands.registerCommand('perimeter.filterSessions', async (text?: string) => {
      const value = text ?? await vscode.window.showInputBox({
        title: 'Perimeter: filter sessions', prompt: 'Shows sessions whose title, ID, host or a call contains this text (empty: all)', value: tree.filter,
      });
      if (value === undefined) return tree.filter;
      tree.setFilter(value);
      showFilter();
      return tree.filter;
    }),
    vscode.commands.registerCommand('perimeter.clearSessionFilter', () => { tree.setFilter(''); showFilter(); }),
    vscode.commands.registerCommand('perimeter.clearFinishedHistory', async (confirmed?: boolean) => {
      const finished = model.sessionList().filter((s) => s.summary.state === 'ended' || s.summary.state === 'lost');
      if (finished.length === 0) { void vscode.window.showInformationMessage('Perimeter: no finished session to clear.'); return 0; }
      if (confirmed !== true) {
        const ok = await vscode.window.showWarningMessage(`Clear ${finished.length} finished session${finished.length === 1 ? '' : 's'} from the Sessions view?`,
          { modal: true, detail: 'They are hidden in this and future windows. The journal on each host keeps them until it is compacted; persisted files are not touched.' }, 'Clear');
        if (ok !== 'Clear') return 0;
      }
      const stored = context.globalState.get<Record<string, string[]>>(FORGOTTEN) ?? {};
      const byHost = new Map<string, string[]>();
      for (const s of finished) byHost.set(s.hostId, [...(byHost.get(s.hostId) ?? []), s.summary.sessionId]);
      for (const [hostId, ids] of byHost) {
        model.forgetSessions(hostId, ids);
        stored[hostId] = [...new Set([...(stored[hostId] ?? []), ...ids])].slice(-2000);
      }
      await context.globalState.update(FORGOTTEN, stored);
      return finished.length;
    }),
  ];
}
