// Restricted Mode (an untrusted workspace): the extension activates and shows what runs, but refuses to start a
// worker and says why; it shows the journal's history read-only. Run by test/extension/host.test.ts with Workspace
// Trust left on (EXT_TEST_WORKSPACE_TRUST=1).
import * as vscode from 'vscode';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { PerimeterApi } from '../../../extension/extension';
import { Journal } from '../../../companion/journal/journal';
import { until } from './helpers';

describe('Perimeter in Restricted Mode', () => {
  it('activates, but Try Locally, Start Worker and Build Template refuse to run anything', async () => {
    assert.equal(vscode.workspace.isTrusted, false, 'the test folder is untrusted');
    const api = await vscode.extensions.getExtension<PerimeterApi>('perimeter.perimeter')!.activate();
    const home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-restricted-'));
    await vscode.workspace.getConfiguration('perimeter').update('home', home, vscode.ConfigurationTarget.Global);
    assert.equal(await vscode.commands.executeCommand('perimeter.tryLocally'), false);
    assert.equal(await vscode.commands.executeCommand('perimeter.startWorker'), false);
    assert.equal(await vscode.commands.executeCommand('perimeter.buildTemplate'), false);
    assert.equal(api.model.host('local')!.connection, 'stopped');
    assert.equal(existsSync(path.join(home, 'control.json')), false, 'no worker was started');
    rmSync(home, { recursive: true, force: true });
  });

  it('shows this machine\'s history from its journal, read-only', async () => {
    const api = await vscode.extensions.getExtension<PerimeterApi>('perimeter.perimeter')!.activate();
    const home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-restricted-history-'));
    try {
      const journal = Journal.open(path.join(home, 'journal'));
      journal.updateSession('sesn_restricted', { workId: 'w', state: 'ended', claimedAt: Date.now(), title: 'Read in Restricted Mode' });
      journal.callStarted({ toolUseId: 'call_1', sessionId: 'sesn_restricted', workId: 'w', name: 'bash', input: { command: 'echo kept' } });
      journal.callFinished('call_1', { text: 'kept', isError: false, exitCode: 0 });
      journal.close();
      await vscode.workspace.getConfiguration('perimeter').update('home', home, vscode.ConfigurationTarget.Global);
      await until(api, () => api.model.session('local', 'sesn_restricted') !== undefined);
      const [node] = api.sessionsTree.getChildren().filter((n) => n.kind === 'session' && n.sessionId === 'sesn_restricted');
      assert.equal(String(api.sessionsTree.getTreeItem(node!).label), 'Read in Restricted Mode');
      assert.deepEqual(api.sessionsTree.getChildren(node).map((c) => String(api.sessionsTree.getTreeItem(c).label)), ['bash: echo kept']);
      assert.equal(api.model.host('local')!.connection, 'stopped', 'nothing was started');
    } finally { rmSync(home, { recursive: true, force: true }); }
  });
});
