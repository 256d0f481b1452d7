// Runs the test suites. `node scripts/test.mjs all` (npm test) lints, type-checks, builds, then runs every suite;
// `node scripts/test.mjs <suite>` runs one; `--list` prints the spec globs of each selected suite as JSON and runs
// nothing. Each suite is a separate mocha process (so a suite's VMs and servers die with it). In `all` every spec file
// belongs to exactly one suite, so the closing "N passed, N failed" line (a failed lint counts as one failure) counts
// each test once; the script exits non-zero on any failure.
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
  // run alone, the extension suite also runs the extension's and control API's unit tests (in `all` the unit suite does)
  extension: { specs: ['test/extension/**/*.test.ts'], timeout: 300000,
    alone: ['test/unit/extension-*.test.ts', 'test/unit/control-*.test.ts', 'test/unit/views-*.test.ts'] },
};

const args = process.argv.slice(2);
const list = args.includes('--list');
const which = args.find((a) => a !== '--list') ?? 'all';
const names = which === 'all' ? Object.keys(SUITES) : [which];
if (names.some((n) => !SUITES[n])) { console.error(`unknown suite ${which}; one of: all ${Object.keys(SUITES).join(' ')}`); process.exit(2); }
/** The spec globs a suite runs in this invocation. */
const specsOf = (name) => which === 'all' ? SUITES[name].specs : [...(SUITES[name].alone ?? []), ...SUITES[name].specs];
if (list) {
  console.log(JSON.stringify(Object.fromEntries(names.map((n) => [n, specsOf(n)]))));
  process.exit(0);
}

function run(cmd, args, env = {}) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } });
  return r.status ?? 1;
}

const total = { passed: 0, failed: 0, skipped: 0 };
if (which === 'all') {
  console.log('=== lint ===');
  if (run('npx', ['eslint', '.']) !== 0) total.failed += 1;
}
if (which === 'all' || process.env.PERIMETER_TEST_BUILD !== '0') {
  const stop = () => { console.log(`${total.passed} passed, ${total.failed + 1} failed`); process.exit(1); };
  if (which === 'all' && run('npx', ['tsc', '-p', '.', '--noEmit']) !== 0) stop();
  if (run('node', ['scripts/build.mjs']) !== 0) stop();
}

const tmp = mkdtempSync(path.join(os.tmpdir(), 'perimeter-tally-'));
for (const name of names) {
  const suite = SUITES[name];
  const tally = path.join(tmp, `${name}.json`);
  console.log(`\n=== suite: ${name} ===`);
  const code = run('npx', ['mocha', '--import=tsx', '--reporter', path.join(root, 'scripts/mocha-reporter.cjs'),
    '--timeout', String(suite.timeout), '--exit', ...specsOf(name)], { PERIMETER_TALLY_FILE: tally });
  if (existsSync(tally)) {
    const t = JSON.parse(readFileSync(tally, 'utf8'));
    total.passed += t.passed; total.failed += t.failed; total.skipped += t.skipped;
    if (code !== 0 && t.failed === 0) total.failed += 1;   // the suite crashed outside a test
  } else if (code !== 0) total.failed += 1;
}
rmSync(tmp, { recursive: true, force: true });
console.log(`\n${total.passed} passed, ${total.failed} failed, ${total.skipped} skipped`);
process.exit(total.failed > 0 ? 1 : 0);
