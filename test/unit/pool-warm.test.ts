// WarmPool semantics with fake items: fills to size, take() refills behind, unhealthy items are replaced, failures
// back off instead of throwing at an idle pool, close() destroys what it holds and what was still being created.
import assert from 'node:assert/strict';
import { WarmPool } from '../../companion/sandbox/pool';
import { fatal, transient, type PerimeterError } from '../../companion/errors';
import { setStderrLogging } from '../../companion/log';

function harness(o: { failFirst?: number; refillDelayMs?: number; failure?: () => Error } = {}) {
  let n = 0;
  let failures = o.failFirst ?? 0;
  const destroyed: number[] = [];
  const unhealthy = new Set<number>();
  const pool = new WarmPool<number>(2, {
    create: async () => { if (failures > 0) { failures--; throw o.failure?.() ?? new Error('boom'); } return ++n; },
    destroy: async (i) => { destroyed.push(i); },
    healthy: async (i) => !unhealthy.has(i),
  }, o.refillDelayMs ?? 0);
  return { pool, destroyed, unhealthy, created: () => n };
}

describe('warm pool', () => {
  it('fills to its size and refills behind each take', async () => {
    const h = harness();
    h.pool.start();
    await h.pool.waitFull(1000);
    assert.equal(h.pool.readyCount, 2);
    assert.equal(await h.pool.take(), 1);
    await h.pool.waitFull(1000);
    assert.equal(h.created(), 3);
    await h.pool.close();
    assert.deepEqual(h.destroyed.sort(), [2, 3]);
  });

  it('close() waits for creations in flight and destroys what they make', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => { release = r; });
    const destroyed: number[] = [];
    let n = 0;
    const pool = new WarmPool<number>(2, { create: async () => { const i = ++n; await gate; return i; }, destroy: async (i) => { destroyed.push(i); }, healthy: async () => true }, 0);
    pool.start();
    assert.equal(pool.fillingCount, 2);
    let closed = false;
    const closing = pool.close().then(() => { closed = true; });
    await new Promise((r) => setImmediate(r));
    assert.equal(closed, false, 'close() waits for the creations in flight');
    release();
    await closing;
    assert.deepEqual(destroyed.sort(), [1, 2], 'both are destroyed, none is left running');
  });

  it('replaces an unhealthy pooled item', async () => {
    const h = harness();
    h.pool.start();
    await h.pool.waitFull(1000);
    h.unhealthy.add(1);
    assert.equal(await h.pool.take(), 2);
    assert.deepEqual(h.destroyed, [1]);
    await h.pool.close();
  });

  it('creates on demand when empty, and retries failed fills with backoff', async () => {
    const h = harness({ failFirst: 2 });
    h.pool.start();
    await h.pool.waitFull(5000);
    assert.equal(h.pool.readyCount, 2);
    await h.pool.close();
    await assert.rejects(h.pool.take(), /closed/);
  });

  it('retries a transient creation failure by itself; a fatal one only when the next take asks again', async () => {
    setStderrLogging(false);
    try {
      const settle = async (pool: WarmPool<number>) => { while (pool.fillingCount > 0) await new Promise((r) => setImmediate(r)); };
      const flaky = harness({ failFirst: 1, failure: () => transient('restore_failed', 'the VM did not start') });
      flaky.pool.start();
      await settle(flaky.pool);
      assert.equal(flaky.pool.retryPending, true, 'a transient failure is retried with backoff');
      await flaky.pool.close();

      const broken = harness({ failFirst: 2, failure: (): PerimeterError => fatal('template_missing', 'no sandbox template') });
      broken.pool.start();
      await settle(broken.pool);
      assert.equal(broken.pool.retryPending, false, 'a fatal failure is not retried on its own');
      assert.equal(broken.pool.readyCount, 0);
      assert.equal(typeof await broken.pool.take(), 'number', 'the next take tries again');
      await broken.pool.waitFull(1000);
      await broken.pool.close();
    } finally { setStderrLogging(true); }
  });

  it('delays the refill after a take while another item is ready, but not when the pool ran dry', async () => {
    const h = harness({ refillDelayMs: 100 });
    h.pool.start();
    await h.pool.waitFull(1000);
    await h.pool.take();
    assert.equal(h.pool.fillingCount, 0, 'no restore competes with the call that just took an item');
    await h.pool.waitFull(1000);
    assert.equal(h.created(), 3, 'refilled after the delay');
    await h.pool.take();
    await h.pool.take();
    assert.equal(h.created(), 5, 'the last ready item was taken: both replacements started at once');
    await h.pool.close();
  });
});
