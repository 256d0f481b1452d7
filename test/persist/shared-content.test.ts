// Files with the same content share one blob in the content-addressed store: empty files, copies in different
// directories, the same content added in one call or across calls, small and large (ranged copy-out) files. Every
// case must persist every file. Runs on the process driver and in real VMs (skipping, saying why, only when QEMU or
// the template is absent).
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import type { SandboxDriver } from '../../companion/sandbox/types';
import { newDriver, skipWithoutVms } from '../vm/helpers';
import { newPersistence, processDriver, runCall, tempDir } from './helpers';

/** Lists every file below the working directory (/workspace) with its size and content hash, one per line, sorted.
 *  Commands use relative paths: the process driver runs them on the host, where absolute guest paths mean nothing. */
const LIST = 'find . -type f -printf "%P %s " -exec sh -c \'sha256sum < "$1" | cut -c1-12\' _ {} \\; | sort';

function sharedContentCases(getDriver: () => SandboxDriver): void {
  let home: string;
  beforeEach(() => { home = tempDir('persist-shared'); });
  afterEach(() => { rmSync(home, { recursive: true, force: true }); });

  it('two empty files (a Python package) persist: both are there in the next call', async () => {
    const p = newPersistence(home);
    const s = 'sesn_shared_empty';
    const made = await runCall(getDriver(), p, s, 'bash', { command: 'mkdir -p pkg && touch pkg/__init__.py pkg/sub.py' });
    assert.deepEqual(made.report, { generation: 1, notes: [], changes: { added: ['/workspace/pkg/__init__.py', '/workspace/pkg/sub.py'], changed: [], removed: [] } });
    const next = await runCall(getDriver(), p, s, 'bash', { command: 'ls -A pkg' });
    assert.equal(next.outcome.text.trim(), '__init__.py\nsub.py');
  });

  it('identical files in different directories, small and large, persist in one call', async () => {
    const p = newPersistence(home);
    const s = 'sesn_shared_dirs';
    const made = await runCall(getDriver(), p, s, 'bash', {
      command: 'mkdir -p a/deep b c && echo same > a/deep/x && echo same > b/y && echo same > c/z && : > a/e1 && : > b/e2'
        + ' && head -c 17000000 /dev/zero > a/big && cp a/big b/big && cp a/big c/big',
      timeout_ms: 120_000,
    });
    assert.equal(made.outcome.isError, false, made.outcome.text);
    assert.deepEqual(made.report, { generation: 1, notes: [], changes: {
      added: ['a/big', 'a/deep/x', 'a/e1', 'b/big', 'b/e2', 'b/y', 'c/big', 'c/z'].map((f) => `/workspace/${f}`), changed: [], removed: [],
    } });
    const next = await runCall(getDriver(), p, s, 'bash', { command: LIST, timeout_ms: 120_000 });
    const big = '17000000 79641e8b4ab6';
    assert.equal(next.outcome.text.trim(), [
      `a/big ${big}`, 'a/deep/x 5 a6328afc76e9', 'a/e1 0 e3b0c44298fc', `b/big ${big}`, 'b/e2 0 e3b0c44298fc', 'b/y 5 a6328afc76e9',
      `c/big ${big}`, 'c/z 5 a6328afc76e9',
    ].join('\n'));
  });

  it('content the store already holds, added again in a later call (and twice in that call), persists', async () => {
    const p = newPersistence(home);
    const s = 'sesn_shared_calls';
    const first = await runCall(getDriver(), p, s, 'bash', { command: 'echo same > one && : > empty1' });
    assert.deepEqual(first.report, { generation: 1, notes: [], changes: { added: ['/workspace/empty1', '/workspace/one'], changed: [], removed: [] } });
    const second = await runCall(getDriver(), p, s, 'bash', { command: 'mkdir -p d && echo same > d/two && echo same > d/three && : > d/empty2 && : > empty3 && echo new > d/n1 && echo new > n2' });
    assert.deepEqual(second.report, { generation: 2, notes: [], changes: {
      added: ['d/empty2', 'd/n1', 'd/three', 'd/two', 'empty3', 'n2'].map((f) => `/workspace/${f}`), changed: [], removed: [],
    } });
    const third = await runCall(getDriver(), p, s, 'bash', { command: 'rm one && echo same > four' });
    assert.deepEqual(third.report, { generation: 3, notes: [], changes: { added: ['/workspace/four'], changed: [], removed: ['/workspace/one'] } });
    const next = await runCall(getDriver(), p, s, 'bash', { command: LIST });
    assert.equal(next.outcome.text.trim(), [
      'd/empty2 0 e3b0c44298fc', 'd/n1 4 7aa7a5359173', 'd/three 5 a6328afc76e9', 'd/two 5 a6328afc76e9', 'empty1 0 e3b0c44298fc',
      'empty3 0 e3b0c44298fc', 'four 5 a6328afc76e9', 'n2 4 7aa7a5359173',
    ].join('\n'));
  });
}

describe('persist: files with the same content (process driver)', function () {
  this.timeout(300_000);
  let proc: ReturnType<typeof processDriver>;
  before(() => { proc = processDriver(); });
  after(async () => { await proc.dispose(); });
  sharedContentCases(() => proc.driver);
});

describe('persist: files with the same content (real VMs)', function () {
  this.timeout(600_000);
  let driver: ReturnType<typeof newDriver> | undefined;
  before(function () { skipWithoutVms(this); driver = newDriver(); });
  after(async () => { await driver?.close(); });
  sharedContentCases(() => driver!);
});
