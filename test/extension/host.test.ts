// Runs the extension-host suites (test/extension/suite/*.suite.ts, bundled to dist/test/suite/index.js) in a real
// VS Code: @vscode/test-electron's runTests() with vscodeExecutablePath pointed at the code-server harness shim
// (test/extension/harness/run-ext-tests.mjs), which starts code-server 4.100.3 (VS Code 1.100.3) on 127.0.0.1 and
// opens its workbench in headless Chromium. The extension host's exit code is the result: runTests rejects on
// failure. Needs scripts/install-code-server.sh and Debian's chromium.
import assert from 'node:assert/strict';
import { runHostSuites } from './harness/host';

describe('extension host (code-server 4.100.3 via @vscode/test-electron runTests)', () => {
  it('passes the integration suite: Try Locally, sessions tree, persist path, output document, crash restart, stop', async () => {
    const r = await runHostSuites('integration');
    assert.equal(r.failed, 0);
    assert.ok(r.passed >= 10, `expected the whole suite to run, got ${JSON.stringify(r)}`);
  });

  it('refuses to start a worker in Restricted Mode (untrusted workspace), and shows the journal\'s history there', async () => {
    const r = await runHostSuites('restricted', { EXT_TEST_WORKSPACE_TRUST: '1' });
    assert.deepEqual(r, { passed: 2, failed: 0, skipped: 0 });
  });

  it('passes the sessions suite: persisted files as files, compare, export, roll back, transcript, filter, clear history', async () => {
    const r = await runHostSuites('sessions');
    assert.deepEqual(r, { passed: 6, failed: 0, skipped: 0 });
  });
});
