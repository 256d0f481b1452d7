// Issue 11, "nothing lost, ever": one session of per-call VMs on a session disk, served by the real worker CLI, with
// the worker SIGKILLed (and restarted on the same home) and the call's QEMU killed at seeded random points (during
// the command, and around the commit). Every call finds exactly the tree the calls before it left (for a call a
// kill interrupted: the tree before it or the tree after it, never a mix), no call runs twice, every call is answered
// once. The driver and its oracle: session-soak.ts. PERIMETER_SESSION_SOAK_CALLS / _SEED change the run (the full
// 500-call run is the bench's `soak` section).
import assert from 'node:assert/strict';
import { skipWithoutSessionDisk, skipWithoutVms } from './helpers';
import { runSessionSoak } from './session-soak';

const CALLS = Number(process.env.PERIMETER_SESSION_SOAK_CALLS ?? 40);
const SEED = Number(process.env.PERIMETER_SESSION_SOAK_SEED ?? 23);

describe('session disks through kills of the worker and of QEMU (real VMs, built CLI)', function () {
  this.timeout(1_800_000);
  before(function () {
    skipWithoutVms(this);
    skipWithoutSessionDisk(this);
  });

  it(`${CALLS} calls changing, adding and deleting files, kills of both kinds: nothing lost or stale, nothing re-run`, async () => {
    const r = await runSessionSoak({ calls: CALLS, seed: SEED, killRate: 0.3, log: process.env.PERIMETER_TEST_LOGS === '1' ? console.log : undefined });
    const summary = JSON.stringify(r);
    console.log(`      ${summary}`);
    assert.equal(r.firstProblem, '', summary);
    assert.equal(r.lost, 0, summary);
    assert.equal(r.stale, 0, summary);
    assert.equal(r.reruns, 0, summary);
    assert.equal(r.failedCalls, 0, summary);
    assert.equal(r.unanswered, 0, summary);
    assert.ok(r.workerKills >= 2 && r.qemuKills >= 2, `kills of both kinds happened: ${summary}`);
    assert.ok(r.interruptedCommitted + r.interruptedNotCommitted >= 2, `kills interrupted calls: ${summary}`);
    assert.ok(r.betweenCalls >= 1, `kills came between calls too: ${summary}`);
  });
});
