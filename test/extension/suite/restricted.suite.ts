// Restricted Mode (an untrusted workspace): the extension activates and shows what runs, but refuses to start a
// worker and says why. Run by test/extension/host.test.ts with Workspace Trust left on (EXT_TEST_WORKSPACE_TRUST=1).
import * as vscode from 'vscode';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { PerimeterApi } from '../../../extension/extension';

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
});
