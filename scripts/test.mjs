// Runs the test suites. `node scripts/test.mjs all` (npm test) type-checks, builds, then runs every suite;
// `node scripts/test.mjs <suite>` runs one. Each suite is a separate mocha process (so a suite's VMs and servers
// die with it); the script ends with one "N passed, N failed" line over all suites and exits non-zero on any failure.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, existsSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const SUITES = {
  unit: { specs: ['test/unit/**/*.test.ts'], timeout: 20000 },
  worker: { specs: ['test/worker/**/*.test.ts'], timeout: 120000 },
  vm: { specs: ['test/vm/**/*.test.ts'], timeout: 300000 },
  persist: { specs: ['test/persist/**/*.test.ts'], timeout: 300000 },
  egress: { specs: ['test/egress/**/*.test.ts'], timeout: 300000 },
  // the extension suite also runs the extension's and control API's pure unit tests (cheap), so it covers issue 5 alone
  extension: { specs: ['test/unit/extension-*.test.ts', 'test/unit/control-*.test.ts', 'test/unit/views-*.test.ts', 'test/extension/**/*.test.ts'], timeout: 300000 },
};

const which = process.argv[2] ?? 'all';
const names = which === 'all' ? Object.keys(SUITES) : [which];
if (names.some((n) => !SUITES[n])) { console.error(`unknown suite ${which}; one of: all ${Object.keys(SUITES).join(' ')}`); process.exit(2); }

function run(cmd, args, env = {}) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } });
  return r.status ?? 1;
}

if (which === 'all' || process.env.PERIMETER_TEST_BUILD !== '0') {
  if (which === 'all' && run('npx', ['tsc', '-p', '.', '--noEmit']) !== 0) { console.log('0 passed, 1 failed'); process.exit(1); }
  if (run('node', ['scripts/build.mjs']) !== 0) { console.log('0 passed, 1 failed'); process.exit(1); }
}

const tmp = mkdtempSync(path.join(os.tmpdir(), 'perimeter-tally-'));
const total = { passed: 0, failed: 0, skipped: 0 };
for (const name of names) {
  const suite = SUITES[name];
  const tally = path.join(tmp, `${name}.json`);
  console.log(`\n=== suite: ${name} ===`);
  const code = run('npx', ['mocha', '--import=tsx', '--reporter', path.join(root, 'scripts/mocha-reporter.cjs'),
    '--timeout', String(suite.timeout), '--exit', ...suite.specs], { PERIMETER_TALLY_FILE: tally });
  if (existsSync(tally)) {
    const t = JSON.parse(readFileSync(tally, 'utf8'));
    total.passed += t.passed; total.failed += t.failed; total.skipped += t.skipped;
    if (code !== 0 && t.failed === 0) total.failed += 1;   // the suite crashed outside a test
  } else if (code !== 0) total.failed += 1;
}
rmSync(tmp, { recursive: true, force: true });
console.log(`\n${total.passed} passed, ${total.failed} failed, ${total.skipped} skipped`);
process.exit(total.failed > 0 ? 1 : 0);
