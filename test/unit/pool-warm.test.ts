// WarmPool semantics with fake items: fills to size, take() refills behind, unhealthy items are replaced, failures
// back off instead of throwing at an idle pool, close() destroys what it holds.
import assert from 'node:assert/strict';
import { WarmPool } from '../../companion/sandbox/pool';

function harness(o: { failFirst?: number; refillDelayMs?: number } = {}) {
  let n = 0;
  let failures = o.failFirst ?? 0;
  const destroyed: number[] = [];
  const unhealthy = new Set<number>();
  const pool = new WarmPool<number>(2, {
    create: async () => { if (failures > 0) { failures--; throw new Error('boom'); } return ++n; },
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
