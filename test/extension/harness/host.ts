// Runs extension-host suites in a real VS Code: @vscode/test-electron's runTests() with vscodeExecutablePath pointed
// at the code-server harness shim (run-ext-tests.mjs), which starts code-server 4.100.3 (VS Code 1.100.3) on
// 127.0.0.1 and opens its workbench in headless Chromium. Used by the mocha files in test/extension/.
import assert from 'node:assert/strict';
import { existsSync, readFileSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runTests } from '@vscode/test-electron';

const root = path.resolve(__dirname, '../../..');
export const shim = path.join(__dirname, 'run-ext-tests.mjs');
export const codeServer = process.env.CODE_SERVER_BIN ?? path.join(root, '.tools/code-server/node_modules/.bin/code-server');

export function requireHarness(): void {
  assert.ok(existsSync(codeServer), `code-server is not installed at ${codeServer}: run scripts/install-code-server.sh`);
  assert.ok(existsSync(process.env.CHROMIUM_BIN ?? '/usr/bin/chromium'), 'Chromium is missing: apt-get install -y chromium');
  assert.ok(existsSync(path.join(root, 'dist/test/suite/index.js')) && existsSync(path.join(root, 'dist/perimeter.js')), 'run npm run build first');
}

/** Runs the named extension-host suites with the extension loaded from `extensionPath` (the repository, or a copy
 *  installed from the .vsix); resolves with their pass/fail counts. */
export async function runHostSuites(suites: string, env: Record<string, string> = {}, extensionPath = root): Promise<{ passed: number; failed: number; skipped: number }> {
  requireHarness();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-host-'));
  const resultFile = path.join(dir, 'result.json');
  try {
    await runTests({
      vscodeExecutablePath: shim,
      extensionDevelopmentPath: extensionPath,
      extensionTestsPath: path.join(root, 'dist/test/suite/index.js'),
      extensionTestsEnv: { PERIMETER_EXT_SUITES: suites, PERIMETER_EXT_RESULT_FILE: resultFile, ...env },
    });
    return JSON.parse(readFileSync(resultFile, 'utf8'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
