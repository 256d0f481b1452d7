// Warm pool: keeps `size` ready items (restored VMs) ahead of need (`resize` changes it; extra ready items go). `take()` hands out a ready item when one is
// there (checked with `healthy` first) and otherwise creates one on the spot; every take triggers a refill behind
// it (optionally a little later while other items are still ready). Invariants: at most `size` items are being
// created or waiting at any time; a failed creation is logged, never thrown at an idle pool: a transient one is
// retried with backoff, a fatal one (a PerimeterError of kind `fatal`, e.g. no template) only when the next take
// asks again; after close() nothing is created and every pooled item is destroyed, including those whose creation was
// in flight (close() resolves once they are).
import { PerimeterError } from '../errors';
import { logger } from '../log';

const log = logger('sandbox:pool');

export interface PoolHooks<T> {
  create(): Promise<T>;
  destroy(item: T): Promise<void>;
  /** A quick liveness check before handing an item out (e.g. an agent ping). */
  healthy(item: T): Promise<boolean>;
}

export class WarmPool<T> {
  private readonly ready: T[] = [];
  private filling = 0;
  private closed = false;
  /** Creations in flight (close() waits for them: each is destroyed when it arrives at a closed pool). */
  private readonly creating = new Set<Promise<void>>();
  private failures = 0;
  private retryTimer: NodeJS.Timeout | null = null;

  private delayTimer: NodeJS.Timeout | null = null;

  constructor(private size: number, private readonly hooks: PoolHooks<T>, private readonly refillDelayMs = 0) {}

  get targetSize(): number { return this.size; }

  /** Keeps `size` items ready from now on: refills up to it, or destroys the ready items beyond it. */
  resize(size: number): void {
    this.size = Math.max(0, size);
    const extra = this.ready.splice(this.size);
    for (const item of extra) void this.hooks.destroy(item).catch(() => {});
    this.refill();
  }

  get readyCount(): number { return this.ready.length; }
  get fillingCount(): number { return this.filling; }
  /** A failed creation is waiting for its backoff to end before the pool tries again. */
  get retryPending(): boolean { return this.retryTimer !== null; }

  /** Starts filling the pool (idempotent). */
  start(): void { this.refill(); }

  async take(): Promise<T> {
    if (this.closed) throw new Error('pool closed');
    while (this.ready.length) {
      const item = this.ready.shift()!;
      this.refillSoon();
      if (await this.hooks.healthy(item).catch(() => false)) return item;
      await this.hooks.destroy(item).catch(() => {});
    }
    this.refill();
    return this.hooks.create();
  }

  /** Resolves once the pool holds `size` ready items (for tests and benchmarks). */
  async waitFull(timeoutMs = 60_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (this.ready.length < this.size) {
      if (this.closed) throw new Error('pool closed');
      if (Date.now() > until) throw new Error(`pool did not fill to ${this.size} within ${timeoutMs} ms (ready ${this.ready.length})`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.delayTimer) clearTimeout(this.delayTimer);
    const items = this.ready.splice(0);
    await Promise.all(items.map((i) => this.hooks.destroy(i).catch(() => {})));
    // Items still being created are destroyed as they arrive (the pool is closed): wait for that too.
    await Promise.allSettled([...this.creating]);
  }

  /**
   * Refill after `refillDelayMs` while other items are still ready: creating an item (a VM restore) competes for
   * the CPU with the call that just took one, so it waits until that call has had its head start.
   */
  private refillSoon(): void {
    if (this.refillDelayMs <= 0 || this.ready.length === 0) return this.refill();
    if (this.delayTimer) return;
    this.delayTimer = setTimeout(() => { this.delayTimer = null; this.refill(); }, this.refillDelayMs);
    this.delayTimer.unref();
  }

  private refill(): void {
    if (this.closed || this.retryTimer) return;
    while (this.ready.length + this.filling < this.size) {
      this.filling++;
      const creating: Promise<void> = this.hooks.create().then(
        async (item) => {
          this.filling--;
          this.failures = 0;
          if (this.closed || this.ready.length >= this.size) { await this.hooks.destroy(item).catch(() => {}); return; }
          this.ready.push(item);
        },
        (err: Error) => {
          this.filling--;
          if (err instanceof PerimeterError && err.fatal) {
            log.error(`warm pool: cannot create a sandbox (${err.message}); trying again at the next call`);
            return;
          }
          this.failures++;
          log.warn(`warm pool: creating a sandbox failed (${err.message}); retrying`);
          if (!this.closed && !this.retryTimer) {
            this.retryTimer = setTimeout(() => { this.retryTimer = null; this.refill(); }, Math.min(30_000, 250 * 2 ** Math.min(this.failures, 7)));
            this.retryTimer.unref();
          }
        },
      ).finally(() => this.creating.delete(creating));
      this.creating.add(creating);
    }
  }
}
