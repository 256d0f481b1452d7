// scripts/test.mjs counts each test once: in `all` (npm test) every spec file under test/ belongs to exactly one
// suite, and the extension suite run alone still includes the extension's unit tests. The suites' globs are
// expanded with mocha's own file lookup, so a file counts where mocha would run it.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const root = path.resolve(__dirname, '../..');
const lookupFiles = createRequire(__filename)('mocha/lib/cli/lookup-files.js').lookupFiles as
  (pattern: string, extensions: string[], recursive: boolean) => string[];

/** The spec globs per suite that `node scripts/test.mjs <which>` would run. */
function plan(which: string): Record<string, string[]> {
  const r = spawnSync(process.execPath, ['scripts/test.mjs', which, '--list'], { cwd: root, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as Record<string, string[]>;
}

function files(specs: string[]): string[] {
  return specs.flatMap((spec) => lookupFiles(path.join(root, spec), ['ts'], false))
    .map((f) => path.relative(root, path.resolve(f)));
}

describe('test runner (scripts/test.mjs)', () => {
  it('runs every spec file under test/ in exactly one suite of `all`', () => {
    const owners = new Map<string, string[]>();
    for (const [suite, specs] of Object.entries(plan('all'))) {
      for (const f of files(specs)) owners.set(f, [...(owners.get(f) ?? []), suite]);
    }
    const twice = [...owners].filter(([, suites]) => suites.length > 1);
    assert.deepEqual(twice, [], 'spec files run more than once by npm test');
    const onDisk = readdirSync(path.join(root, 'test'), { recursive: true, encoding: 'utf8' })
      .filter((f) => f.endsWith('.test.ts')).map((f) => path.join('test', f));
    assert.deepEqual(onDisk.filter((f) => !owners.has(f)), [], 'spec files no suite runs');
  });

  it('runs the extension unit tests with the extension suite alone', () => {
    const alone = files(plan('extension').extension);
    for (const f of ['test/unit/extension-manifest.test.ts', 'test/unit/control-server.test.ts', 'test/extension/e2e.test.ts']) {
      assert.ok(alone.includes(f), `${f} missing from the extension suite`);
    }
  });
});
