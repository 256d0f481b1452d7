// Mocha runner loaded by the VS Code extension host (extensionTestsPath = dist/test/suite/index.js, bundled by
// scripts/build.mjs with `mocha` and `vscode` external). Exports run(): it resolves when every test passed and rejects
// otherwise, which the host turns into its exit code. PERIMETER_EXT_SUITES (comma-separated: integration, ssh,
// restricted, sessions, template, templates-ssh) selects the suites (default: integration,ssh; restricted needs Workspace
// Trust on; template needs the extension installed from the .vsix, see test/extension/template.test.ts; templates-ssh
// the sshd and state directories of test/extension/templates-ssh.test.ts).
// PERIMETER_EXT_RESULT_FILE, when set, receives a JSON summary.
import * as fs from 'fs';
import Mocha from 'mocha';

export async function run(): Promise<void> {
  const mocha = new Mocha({ ui: 'bdd', color: false, timeout: 120_000 });
  // Test modules are bundled into this file; expose describe/it before evaluating them.
  mocha.suite.emit('pre-require', globalThis, 'perimeter-suite', mocha);
  const wanted = (process.env.PERIMETER_EXT_SUITES ?? 'integration,ssh').split(',').map((s) => s.trim());
  if (wanted.includes('integration')) await import('./integration.suite');
  if (wanted.includes('ssh')) await import('./ssh.suite');
  if (wanted.includes('restricted')) await import('./restricted.suite');
  if (wanted.includes('sessions')) await import('./sessions.suite');
  if (wanted.includes('template')) await import('./template.suite');
  if (wanted.includes('templates-ssh')) await import('./templates-ssh.suite');
  const resultFile = process.env.PERIMETER_EXT_RESULT_FILE;
  await new Promise<void>((resolve, reject) => {
    const runner = mocha.run((failures) => {
      const st = runner.stats!;
      const summary = { passed: st.passes, failed: st.failures, skipped: st.pending };
      console.log(`extension host: ${summary.passed} passed, ${summary.failed} failed, ${summary.skipped} skipped`);
      if (resultFile) fs.writeFileSync(resultFile, JSON.stringify(summary) + '\n');
      if (failures > 0) reject(new Error(`${failures} extension-host tests failed`)); else resolve();
    });
  });
}
