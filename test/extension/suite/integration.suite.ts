// Integration tests in a real VS Code extension host (code-server 4.100.3 = VS Code 1.100.3) driving the real
// companion (dist/perimeter.js) with its embedded dev queue and the process sandbox driver. What a user does from the
// palette, done through the same commands: Try Locally (the companion runs detached, logging to its file), watch the
// Sessions tree, add a persisted path that the next call uses, open a call's output document, survive a worker crash,
// Stop Worker.
import * as vscode from 'vscode';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { PerimeterApi } from '../../../extension/extension';
import type { PerimeterNode } from '../../../extension/views/trees';
import { until, untilLogged, workerLog } from './helpers';
import type { DoctorReport } from '../../../companion/protocol/doctor';
import { summarizeDoctor } from '../../../extension/launcher/doctor';

const EXTENSION_ID = 'perimeter.perimeter';
/** The fixture scenario's live-output call prints until this host file exists (see persist-scenario.json). */
const LIVE_RELEASE = '/tmp/perimeter-ext-live-release';

function pidAlive(pid: number): boolean { try { process.kill(pid, 0); return true; } catch { return false; } }

describe('Perimeter in the VS Code extension host', function () {
  let api: PerimeterApi;
  let home: string;
  const cfg = () => vscode.workspace.getConfiguration('perimeter');

  before(async () => {
    rmSync(LIVE_RELEASE, { force: true });
    const ext = vscode.extensions.getExtension<PerimeterApi>(EXTENSION_ID);
    assert.ok(ext, `${EXTENSION_ID} is installed`);
    api = await ext.activate();
    home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-ext-home-'));
    await cfg().update('home', home, vscode.ConfigurationTarget.Global);
    await cfg().update('sandboxDriver', 'process', vscode.ConfigurationTarget.Global);
    await cfg().update('concurrency', 2, vscode.ConfigurationTarget.Global);
    // Only /workspace/keep persists by default, so a file under /workspace/data survives only via Persist Path.
    await cfg().update('persist.defaults', ['/workspace/keep'], vscode.ConfigurationTarget.Global);
    await cfg().update('localScenario', path.join(ext.extensionPath, 'test/extension/fixtures/persist-scenario.json'), vscode.ConfigurationTarget.Global);
  });

  after(async () => {
    rmSync(LIVE_RELEASE, { force: true });
    if (api?.registry.get('local')?.isRunning) await vscode.commands.executeCommand('perimeter.stopWorker', 'local');
    if (home) rmSync(home, { recursive: true, force: true });
  });

  const sessionNodes = () => api.sessionsTree.getChildren() as Array<Extract<PerimeterNode, { kind: 'session' }>>;
  const callNodes = (s: PerimeterNode) => api.sessionsTree.getChildren(s) as Array<Extract<PerimeterNode, { kind: 'call' }>>;
  const labelOf = (n: PerimeterNode) => String(api.sessionsTree.getTreeItem(n).label);

  it('contributes its commands under the Perimeter category', async () => {
    const all = await vscode.commands.getCommands(true);
    for (const c of ['startWorker', 'stopWorker', 'restartWorker', 'showWorkerLog', 'connectEnvironment', 'tryLocally', 'selectHost', 'persistPath', 'stopPersistingPath', 'buildTemplate', 'runDoctor',
      'forgetKey', 'reconnect', 'removeHost', 'startSelectedWorker', 'stopSelectedWorker']) {
      assert.ok(all.includes(`perimeter.${c}`), c);
    }
    assert.match(api.statusBar.text, /Perimeter: stopped/);
  });

  it('Run Doctor opens a read-only report with a fix for each problem, agreeing with its summary', async () => {
    const report = await vscode.commands.executeCommand<DoctorReport>('perimeter.runDoctor', 'local');
    assert.ok(report.checks.some((c) => c.name === 'node' && c.ok), JSON.stringify(report));
    const doc = vscode.window.activeTextEditor!.document;
    assert.equal(doc.uri.scheme, 'perimeter-doctor', 'a virtual document: nothing to save when it is closed');
    assert.equal(doc.isDirty, false);
    const text = doc.getText();
    assert.match(text, /^# Perimeter doctor: This machine\n/);
    assert.ok(text.includes(`**This machine: ${summarizeDoctor(report).headline}.**`), text.split('\n').slice(0, 4).join('\n'));
    for (const c of report.checks.filter((x) => !x.ok)) {
      assert.ok(text.includes(`### ${c.severity === 'error' ? '✗' : '⚠'} ${c.name} (${c.severity})`), `a section for ${c.name}`);
      if (c.fix) assert.ok(text.includes(`**Fix:** ${c.fix}`), `the fix for ${c.name}`);
    }
    assert.doesNotMatch(text, /"ok": true/, 'no raw JSON');
    await vscode.commands.executeCommand('workbench.action.closeActiveEditor');
  });

  it('Try Locally starts the companion; the scenario\'s session appears in the Sessions tree', async () => {
    assert.equal(await vscode.commands.executeCommand('perimeter.tryLocally'), true, workerLog(api).slice(-15).join('\n'));
    assert.equal(api.model.host('local')!.connection, 'connected');
    const endpoint = JSON.parse(readFileSync(path.join(home, 'control.json'), 'utf8'));
    assert.ok(pidAlive(endpoint.pid), 'the companion runs');
    const [hostNode] = api.workerTree.getChildren();
    assert.equal(String(api.workerTree.getTreeItem(hostNode!).label), 'This machine');
    const details = api.workerTree.getChildren(hostNode).map((n) => api.workerTree.getTreeItem(n));
    assert.ok(details.some((d) => d.label === 'Sandbox driver' && d.description === 'process'));
    await until(api, () => sessionNodes().length === 1);
    assert.match(api.statusBar.text, /Perimeter: This machine · polling · 1 session/);
  });

  it('Try Locally again while the local worker runs says so and starts nothing', async () => {
    const pid = JSON.parse(readFileSync(path.join(home, 'control.json'), 'utf8')).pid as number;
    assert.equal(await vscode.commands.executeCommand('perimeter.tryLocally'), true);
    assert.equal(JSON.parse(readFileSync(path.join(home, 'control.json'), 'utf8')).pid, pid, 'the same worker');
    assert.equal(api.registry.get('local')!.runningMode, 'localQueue');
  });

  it('the title bar\'s Select Host, Start and Stop ignore the focused row; the tree marks the selected host', async () => {
    const [hostNode] = api.workerTree.getChildren();
    assert.match(String(api.workerTree.getTreeItem(hostNode!).description), /^selected · polling/);
    // VS Code hands a view title action the focused row: Select Host must open its picker, not read the row as a host.
    const picking = vscode.commands.executeCommand('perimeter.selectHost', hostNode);
    let settled = false;
    void picking.then(() => { settled = true; }, () => { settled = true; });
    while (!settled) { await vscode.commands.executeCommand('workbench.action.closeQuickOpen'); await new Promise((r) => setTimeout(r, 50)); }
    assert.equal(await picking, undefined, 'the picker was dismissed; nothing thrown');
    assert.equal(api.registry.selectedHostId(), 'local');
  });

  it('runs the companion on its own (session, process group, output to <home>/worker.log); the Worker Log follows that file', async () => {
    const { pid } = JSON.parse(readFileSync(path.join(home, 'control.json'), 'utf8')) as { pid: number };
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const [, , pgrp, sid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    assert.equal(Number(pgrp), pid, 'it leads its own process group');
    assert.equal(Number(sid), pid, 'it leads its own session');
    const log = path.join(home, 'worker.log');
    assert.equal(readlinkSync(`/proc/${pid}/fd/1`), log);
    assert.equal(readlinkSync(`/proc/${pid}/fd/2`), log);
    const polling = /\[worker\] state: polling/;
    assert.match(readFileSync(log, 'utf8'), polling);
    await untilLogged(api, (l) => polling.test(l));
  });

  it('adds a persisted path that the next call uses', async () => {
    const [session] = sessionNodes();
    assert.equal(await vscode.commands.executeCommand('perimeter.persistPath', session, '/workspace/data'), true);
    assert.deepEqual(api.model.persistOf('local', session!.sessionId)!.patterns, ['/workspace/keep', '/workspace/data']);
    // The scenario writes /workspace/data/note.txt in one call and reads it in the next, from a fresh sandbox.
    await until(api, () => callNodes(session!).some((c) => labelOf(c) === 'read: /workspace/data/note.txt' && api.model.findCall('local', c.toolUseId)!.finishedAt !== null));
    const read = callNodes(session!).find((c) => labelOf(c) === 'read: /workspace/data/note.txt')!;
    const call = api.model.findCall('local', read.toolUseId)!;
    assert.equal(call.isError, false, `read failed: ${call.outputPreview}`);
    assert.match(call.outputPreview, /kept between calls/);
    await until(api, () => (api.model.persistOf('local', session!.sessionId)?.files ?? []).some((f) => f.path === '/workspace/data/note.txt'));
    const persistSession = api.persistTree.getChildren().find((n) => n.kind === 'persistSession' && n.sessionId === session!.sessionId)!;
    const rows = api.persistTree.getChildren(persistSession).map((n) => String(api.persistTree.getTreeItem(n).label));
    assert.ok(rows.includes('/workspace/data') && rows.includes('/workspace/data/note.txt'), rows.join(', '));
  });

  it('Stop Persisting Path removes a path from the session (context menu on the path)', async () => {
    const [session] = sessionNodes();
    const persistSession = api.persistTree.getChildren().find((n) => n.kind === 'persistSession' && n.sessionId === session!.sessionId)!;
    const pattern = api.persistTree.getChildren(persistSession).find((n) => n.kind === 'pattern' && n.pattern === '/workspace/keep')!;
    assert.equal(api.persistTree.getTreeItem(pattern).contextValue, 'persistPattern');
    // `true`: confirmed (the command asks first, since the next commit drops the path's stored files).
    assert.equal(await vscode.commands.executeCommand('perimeter.stopPersistingPath', pattern, undefined, true), true);
    assert.deepEqual(api.model.persistOf('local', session!.sessionId)!.patterns, ['/workspace/data']);
  });

  it('a running call\'s document follows its live output, then shows the full output', async () => {
    const [session] = sessionNodes();
    const isLive = (c: PerimeterNode) => labelOf(c).startsWith('bash: i=0; while');
    await until(api, () => callNodes(session!).some(isLive));
    const doc = await vscode.commands.executeCommand<vscode.TextDocument>('perimeter.openCall', callNodes(session!).find(isLive));
    const changed = (pred: (text: string) => boolean) => new Promise<void>((resolve) => {
      if (pred(doc.getText())) { resolve(); return; }
      const sub = vscode.workspace.onDidChangeTextDocument((e) => { if (e.document === doc && pred(doc.getText())) { sub.dispose(); resolve(); } });
    });
    // The call keeps printing until the release file exists: the document must grow while the call still runs.
    assert.match(doc.getText(), /follows the live output/, 'opened while the call runs');
    await changed((t) => /tick-\d+/.test(t) && /follows the live output/.test(t));
    writeFileSync(LIVE_RELEASE, '');
    await changed((t) => /^released$/m.test(t) && !/follows the live output/.test(t));
    assert.match(doc.getText(), /state: {4}posted/);
  });

  it('lists calls newest first and opens a call\'s input and output as a read-only document', async () => {
    const [session] = sessionNodes();
    await until(api, () => callNodes(session!).some((c) => labelOf(c).startsWith('bash: for i in') && api.model.findCall('local', c.toolUseId)!.finishedAt !== null));
    const labels = callNodes(session!).map(labelOf);
    assert.equal(labels[0], 'bash: for i in $(seq 1 5); do echo line-$i; done; echo all-done', labels.join(' | '));
    assert.equal(labels.at(-1), 'bash: echo session started');
    const node = callNodes(session!)[0]!;
    const item = api.sessionsTree.getTreeItem(node);
    assert.equal(item.command?.command, 'perimeter.openCall');
    assert.equal(item.contextValue, 'call finished');
    const doc = await vscode.commands.executeCommand<vscode.TextDocument>('perimeter.openCall', node);
    assert.equal(doc.uri.scheme, 'perimeter-call');
    const text = doc.getText();
    assert.match(text, /## input\n\{\n {2}"command": "for i in/);
    assert.match(text, /line-1\nline-2\nline-3\nline-4\nline-5\nall-done/);
    assert.equal(vscode.window.activeTextEditor?.document.uri.toString(), doc.uri.toString());
  });

  it('restarts the companion after a crash and keeps the history visible', async () => {
    const before = JSON.parse(readFileSync(path.join(home, 'control.json'), 'utf8')).pid as number;
    const sessionsBefore = sessionNodes().length;
    process.kill(before, 'SIGKILL');
    await until(api, () => api.model.host('local')!.connection === 'reconnecting');
    assert.ok(sessionNodes().length >= sessionsBefore, 'history stays while the worker is down');
    assert.ok(api.notices.openNotices().some((n) => n.hostId === 'local' && /lost the worker on This machine/.test(n.message)), 'a toast says so');
    await until(api, () => api.model.host('local')!.connection === 'connected');
    assert.deepEqual(api.notices.openNotices(), [], 'the toast went away once the worker was back');
    const after = JSON.parse(readFileSync(path.join(home, 'control.json'), 'utf8')).pid as number;
    assert.notEqual(after, before);
    assert.equal(api.model.host('local')!.restarts, 1);
    await untilLogged(api, (l) => /lost the worker/.test(l));   // the Worker Log tells what happened
  });

  it('Stop Worker in the title bar stops the selected host\'s companion whatever row has focus; the sessions stay listed', async () => {
    const pid = JSON.parse(readFileSync(path.join(home, 'control.json'), 'utf8')).pid as number;
    assert.equal(await vscode.commands.executeCommand('perimeter.stopSelectedWorker', { kind: 'host', hostId: 'ssh:not-the-selected-one' }), true);
    assert.equal(api.model.host('local')!.connection, 'stopped');
    assert.equal(pidAlive(pid), false);
    assert.ok(sessionNodes().length >= 1);
    assert.match(api.statusBar.text, /Perimeter: stopped/);
  });
});
