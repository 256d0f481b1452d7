// Extension-host tests (real VS Code 1.100.3 API, real companion on the process driver) of transcripts, persisted
// files as files and the Sessions view's tools, against test/extension/fixtures/sessions-scenario.json: the read-only
// `perimeter-persist:` file system (stat, directories, bytes, writes refused), Compare with Previous Generation,
// Export to Workspace… (new file, existing file refused unless confirmed), Roll Back to This Generation, Open
// Transcript, Copy Session ID, the filter, a waiting call counted as running for the ticking durations, and Clear
// Finished History (cleared sessions stay cleared when the journal is read again). Run by test/extension/host.test.ts.
import * as vscode from 'vscode';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { PerimeterApi } from '../../../extension/extension';
import type { PerimeterNode } from '../../../extension/views/trees';
import { until, workerLog } from './helpers';

type Node<K extends PerimeterNode['kind']> = Extract<PerimeterNode, { kind: K }>;

describe('transcripts, persisted files as files, and the Sessions view', function () {
  let api: PerimeterApi;
  let home: string;
  let sessionId: string;
  const cfg = () => vscode.workspace.getConfiguration('perimeter');
  const workspace = () => vscode.workspace.workspaceFolders![0]!.uri.fsPath;
  const persistUri = (generation: number, guestPath: string) => vscode.Uri.from({ scheme: 'perimeter-persist', path: `/local/${encodeURIComponent(sessionId)}/${generation}${guestPath}` });
  const persistChildren = (n?: PerimeterNode) => api.persistTree.getChildren(n);
  const sessionNode = () => persistChildren().find((n): n is Node<'persistSession'> => n.kind === 'persistSession' && n.sessionId === sessionId)!;
  const fileNode = (p: string) => persistChildren(sessionNode()).find((n): n is Node<'file'> => n.kind === 'file' && n.path === p)!;

  before(async () => {
    const ext = vscode.extensions.getExtension<PerimeterApi>('perimeter.perimeter')!;
    api = await ext.activate();
    home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-ext-sessions-'));
    await cfg().update('home', home, vscode.ConfigurationTarget.Global);
    await cfg().update('sandboxDriver', 'process', vscode.ConfigurationTarget.Global);
    await cfg().update('persist.defaults', ['/workspace'], vscode.ConfigurationTarget.Global);
    await cfg().update('localScenario', path.join(ext.extensionPath, 'test/extension/fixtures/sessions-scenario.json'), vscode.ConfigurationTarget.Global);
    assert.equal(await vscode.commands.executeCommand('perimeter.tryLocally'), true, workerLog(api).slice(-15).join('\n'));
    await until(api, () => api.model.sessionList().length === 1);
    sessionId = api.model.sessionList()[0]!.summary.sessionId;
    // The scenario writes notes.txt twice and extra/todo.txt, then its last call waits for a confirmation.
    await until(api, () => api.model.callList('local', sessionId).some((c) => c.name === 'bash' && c.state === 'waiting_confirmation' && (c.input as { command: string }).command === 'echo later'));
    await until(api, () => (api.model.persistOf('local', sessionId)?.files ?? []).length === 2);
  });

  after(async () => {
    if (api?.registry.get('local')?.isRunning) await vscode.commands.executeCommand('perimeter.stopWorker', 'local');
    rmSync(home, { recursive: true, force: true });
    for (const d of ['exported']) rmSync(path.join(workspace(), d), { recursive: true, force: true });
  });

  it('serves persisted files read-only as perimeter-persist: files', async () => {
    const current = api.model.persistOf('local', sessionId)!.generation;
    const notes = persistUri(current, '/workspace/notes.txt');
    assert.equal(Buffer.from(await vscode.workspace.fs.readFile(notes)).toString(), 'second version\n');
    const stat = await vscode.workspace.fs.stat(notes);
    assert.deepEqual([stat.type, stat.size], [vscode.FileType.File, 'second version\n'.length]);
    const dir = await vscode.workspace.fs.readDirectory(persistUri(current, '/workspace'));
    assert.deepEqual(dir.sort(), [['extra', vscode.FileType.Directory], ['notes.txt', vscode.FileType.File]]);
    await assert.rejects(Promise.resolve(vscode.workspace.fs.writeFile(notes, Buffer.from('changed'))), /NoPermissions|permission|read-?only/i);
    await assert.rejects(Promise.resolve(vscode.workspace.fs.delete(notes)), /NoPermissions|permission|read-?only/i);
    await assert.rejects(Promise.resolve(vscode.workspace.fs.stat(persistUri(current, '/workspace/none'))), /EntryNotFound|FileNotFound/);
    const doc = await vscode.commands.executeCommand<vscode.TextDocument>('perimeter.openPersistedFile', fileNode('/workspace/notes.txt'));
    assert.equal(doc.getText(), 'second version\n');
  });

  it('compares a file with its previous generation that differs', async () => {
    const r = await vscode.commands.executeCommand<{ left: string; right: string }>('perimeter.compareWithPreviousGeneration', fileNode('/workspace/notes.txt'));
    assert.ok(r, 'a diff was opened');
    const left = vscode.Uri.parse(r.left);
    assert.equal(Buffer.from(await vscode.workspace.fs.readFile(left)).toString(), 'first version\n');
    assert.equal(vscode.window.tabGroups.activeTabGroup.activeTab?.input instanceof vscode.TabInputTextDiff, true);
  });

  it('exports a file into the workspace, replacing an existing one only when confirmed', async () => {
    const target = path.join(workspace(), 'exported', 'notes.txt');
    const first = await vscode.commands.executeCommand<{ written: string[]; skipped: string[] }>('perimeter.exportToWorkspace', fileNode('/workspace/notes.txt'), 'exported');
    assert.deepEqual(first.written, ['notes.txt']);
    assert.equal(readFileSync(target, 'utf8'), 'second version\n');
    const again = await vscode.commands.executeCommand<{ written: string[]; skipped: string[] }>('perimeter.exportToWorkspace', fileNode('/workspace/notes.txt'), 'exported', false);
    assert.deepEqual([again.written, again.skipped.length], [[], 1]);
    const replaced = await vscode.commands.executeCommand<{ written: string[] }>('perimeter.exportToWorkspace', fileNode('/workspace/notes.txt'), 'exported', true);
    assert.deepEqual(replaced.written, ['notes.txt']);
    assert.ok(!existsSync(path.join(workspace(), 'exported', 'extra')), 'only the chosen file');
  });

  it('lists the kept generations and rolls back to an older one (a new generation with its content)', async () => {
    const before = api.model.persistOf('local', sessionId)!.generation;
    const generations = persistChildren(sessionNode()).find((n): n is Node<'generations'> => n.kind === 'generations')!;
    const list = () => persistChildren(generations).filter((n): n is Node<'generation'> => n.kind === 'generation');
    persistChildren(generations);   // the first expansion reads the generations through the control API
    while (list().length < 3) await new Promise((r) => setTimeout(r, 50));
    const oldest = list().at(-1)!;
    assert.equal(await vscode.commands.executeCommand('perimeter.rollBackToGeneration', oldest, true), true);
    assert.equal(api.model.persistOf('local', sessionId)!.generation, before + 1);
    assert.equal(Buffer.from(await vscode.workspace.fs.readFile(persistUri(before + 1, '/workspace/notes.txt'))).toString(), 'first version\n');
  });

  it('opens the session\'s transcript, copies its ID, filters the view, and ticks while a call waits', async () => {
    const session = api.sessionsTree.getChildren()[0]!;
    const doc = await vscode.commands.executeCommand<vscode.TextDocument>('perimeter.openTranscript', session);
    assert.equal(doc.uri.scheme, 'perimeter-transcript');
    assert.match(doc.getText(), /^# Tidy the notes$/m);
    assert.match(doc.getText(), /write: \/workspace\/notes\.txt/);
    assert.equal(await vscode.commands.executeCommand('perimeter.copySessionId', session), sessionId);
    assert.equal(await vscode.env.clipboard.readText(), sessionId);
    await vscode.commands.executeCommand('perimeter.filterSessions', 'no such session');
    assert.equal(api.sessionsTree.getChildren().length, 0);
    await vscode.commands.executeCommand('perimeter.filterSessions', 'tidy');
    assert.equal(api.sessionsTree.getChildren().length, 1);
    await vscode.commands.executeCommand('perimeter.clearSessionFilter');
    assert.equal(api.sessionsTree.filter, '');
    assert.equal(api.sessionsTree.hasRunningCalls(), true, 'the waiting call\'s duration ticks');
  });

  it('clears finished sessions from the history for good', async () => {
    assert.equal(await vscode.commands.executeCommand('perimeter.stopWorker'), true);
    await until(api, () => api.model.session('local', sessionId)?.summary.state === 'ended');
    assert.equal(await vscode.commands.executeCommand('perimeter.clearFinishedHistory', true), 1);
    assert.equal(api.model.session('local', sessionId), undefined);
    await api.history.refresh();
    assert.equal(api.model.session('local', sessionId), undefined, 'reading the journal again does not bring it back');
  });
});
