// The bash and grep tools in real QEMU microVMs (the guest agent's output cap, the guest's ready shell and its
// fork/exec path, the guest's rg and its absence): what the model reads must be the same as on any other driver.
import assert from 'node:assert/strict';
import type { Sandbox } from '../../companion/sandbox/types';
import type { QemuDriver } from '../../companion/sandbox/qemu/driver';
import { newDriver, skipWithoutVms } from './helpers';
import { BASH_OUTPUT_LIMIT, INITIAL_SHELL, runTool } from '../../companion/tools/semantics';
import { assertNumberedWithOneGap } from '../unit/numbered-output';
import { assertGrepSameWithoutRipgrep, GREP_TREE_SCRIPT } from '../unit/grep-cases';

describe('bash and grep tools (real VMs)', function () {
  let driver: QemuDriver;
  const opened: Sandbox[] = [];
  const acquire = async () => { const s = await driver.acquire({ sessionId: 'test' }); opened.push(s); return s; };

  before(function () { skipWithoutVms(this); driver = newDriver(); });
  afterEach(async () => { await Promise.all(opened.splice(0).map((s) => s.destroy())); });
  after(async () => { await driver?.close(); });

  it('bash: output over the cap keeps whole lines of head and tail, the marker where lines are missing', async () => {
    const s = await acquire();
    const r = await runTool('bash', { command: 'seq 1 200000' }, { sandbox: s, shell: INITIAL_SHELL, callTimeoutMs: 120_000 });
    assert.equal(r.isError, false, r.text.slice(0, 200));
    assertNumberedWithOneGap(r.text, 200_000);
    assert.ok(Buffer.byteLength(r.text) <= BASH_OUTPUT_LIMIT);
  });

  it('bash: a command\'s lines are numbered from 1 through the ready shell and through fork/exec', async () => {
    const s = await acquire();
    const command = 'echo "$LINENO"\nnosuchcmd\nf() {\n  echo "in f $LINENO"\n}\nf\nfoo(';
    const expected = [
      '1', '/bin/bash: line 2: nosuchcmd: command not found', 'in f 4',
      "/bin/bash: eval: line 7: syntax error near unexpected token `newline'", "/bin/bash: eval: line 7: `foo('",
    ].join('\n');
    // The first call of a fresh VM takes the snapshot's ready shell; a variable named BASH* is one the ready shell
    // leaves to fork/exec.
    const ways: { way: string; env: Record<string, string> }[] = [{ way: 'ready shell', env: {} }, { way: 'fork/exec', env: { BASH_PERIMETER_TEST: '1' } }];
    for (const { way, env } of ways) {
      const r = await runTool('bash', { command }, { sandbox: s, shell: { ...INITIAL_SHELL, env }, callTimeoutMs: 60_000 });
      assert.deepEqual([r.isError, r.text], [true, expected], way);
    }
  });

  it('grep: without rg in the VM, the tool\'s own search gives the same answers (paths, binary, hidden, cap)', async () => {
    const s = await acquire();
    const tree = await runTool('bash', { command: GREP_TREE_SCRIPT }, { sandbox: s, shell: INITIAL_SHELL, callTimeoutMs: 60_000 });
    assert.equal(tree.isError, false, tree.text);
    await assertGrepSameWithoutRipgrep(s);
  });
});
