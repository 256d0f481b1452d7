// Session-disk benchmark: a warm-pool `echo` bash call in per-call mode with one file changed per call, calls 1 s
// apart, over persisted workspaces of 0, 10 000 (~10 MiB) and 100 000 (~1 GiB) files; persistence's share of the
// call's critical path (taking the prepared VM, prepare, commit; the VM's kill, which a call without persistence pays
// too, left out), the whole call, the cold path (no prepared VM), a 1 GiB change's commit, host bytes per generation,
// a compaction, and the file store's copy-in + copy-out for the same calls where its VM can hold the workspace.
// Runnable alone: `npx tsx test/bench/session-disk-bench.ts [--json] [--calls N]` (needs a template with a session
// disk); `sessionDiskBench` is the same for a bench section.
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { loadConfig } from '../../companion/config';
import { setStderrLogging } from '../../companion/log';
import { Persistence, type PersistSettings } from '../../companion/persist/persistence';
import { DiskPersistence } from '../../companion/persist/disk/persistence';
import { DiskStore } from '../../companion/persist/disk/store';
import { QemuDriver } from '../../companion/sandbox/qemu/driver';
import { findTemplate } from '../../companion/sandbox/template/manifest';
import type { Sandbox } from '../../companion/sandbox/types';
import { runTool } from '../../companion/tools/semantics';

const WORKSPACES = [0, 10_000, 100_000] as const;
/** Bytes per file: 10 000 files ≈ 10 MiB, 100 000 files ≈ 1 GiB. */
const FILE_BYTES: Record<number, number> = { 0: 0, 10_000: 1024, 100_000: 10_240 };
const GAP_MS = 1000;

const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s.length ? s[Math.floor(s.length / 2)]! : NaN; };
const round = (x: number) => Math.round(x * 10) / 10;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface CallTimes { overheadMs: number; callMs: number; acquireMs: number; commitMs: number }

/** One call as the orchestrator makes it; the VM's destroy (inside commit) is timed and left out of the overhead. */
async function call(p: DiskPersistence, driver: QemuDriver, s: string, command: string, cold = false): Promise<CallTimes> {
  if (cold) await p.endSession(s);
  const t0 = performance.now();
  const sb = await p.acquire(s, () => driver.acquire({ sessionId: s }));
  const t1 = performance.now();
  const shell = await p.prepare(s, sb);
  const t2 = performance.now();
  const out = await runTool('bash', { command, timeout_ms: 600_000 }, { sandbox: sb, shell, callTimeoutMs: 600_000 });
  if (out.isError) throw new Error(`${command}: ${out.text}`);
  const t3 = performance.now();
  let destroyMs = 0;
  const destroy = sb.destroy.bind(sb);
  (sb as { destroy: Sandbox['destroy'] }).destroy = async () => { const t = performance.now(); try { return await destroy(); } finally { destroyMs += performance.now() - t; } };
  const report = await p.commit(s, sb, out.shell, { timedOut: out.timedOut });
  const t4 = performance.now();
  if (report.notes.length) throw new Error(`commit: ${report.notes.join('; ')}`);
  await sb.destroy();
  return { overheadMs: (t1 - t0) + (t2 - t1) + (t4 - t3 - destroyMs), callMs: t4 - t0 - destroyMs, acquireMs: t1 - t0, commitMs: t4 - t3 - destroyMs };
}

/** A workspace of `files` files under /workspace/ws, written in the guest (python: no per-file fork). */
function seedCommand(files: number): string {
  if (files === 0) return 'true';
  return `python3 -c "import os
b = os.urandom(${FILE_BYTES[files]})
for d in range(${Math.ceil(files / 1000)}):
    os.makedirs('/workspace/ws/d%d' % d, exist_ok=True)
    for f in range(min(1000, ${files} - d * 1000)):
        open('/workspace/ws/d%d/f%d' % (d, f), 'wb').write(b)"`;
}

export async function sessionDiskBench(o: { calls: number; log: (l: string) => void }): Promise<Record<string, unknown>> {
  setStderrLogging(false);
  const config = loadConfig({ sandbox: { poolSize: 2, callTimeoutMs: 900_000 } });
  const t = findTemplate(config.home, config.sandbox.template);
  const bytes = t?.manifest.sessionDisk?.bytes;
  if (!bytes) throw new Error('the template has no session disk (perimeter template build)');
  const driver = new QemuDriver(config);
  await driver.warm(300_000);
  const home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-bench-disk-'));
  const persist: PersistSettings = { ...config.persist, maxBytes: bytes, keepGenerations: 3 };
  const overhead: Record<string, number> = {};
  const callMs: Record<string, number> = {};
  const cold: Record<string, number> = {};
  const layerBytes: number[] = [];
  const out: Record<string, unknown> = {};
  try {
    for (const files of WORKSPACES) {
      const p = new DiskPersistence({ home, persist, files: new Persistence({ home, persist }), mode: 'per-call' });
      const s = `sesn_bench_${files}`;
      const seedStart = performance.now();
      await call(p, driver, s, seedCommand(files));
      o.log(`  ${files} files: workspace written in ${Math.round((performance.now() - seedStart) / 1000)} s`);
      // Enough calls for the seed's layer to be merged into the disk's base (background work), then steady state.
      const store = await p.store(s);
      for (let i = 0; i < 6; i++) { await sleep(GAP_MS); await call(p, driver, s, `echo warm${i} > /workspace/changed.txt`); }
      await store.idle();
      const warm: CallTimes[] = [];
      for (let i = 0; i < o.calls; i++) {
        await sleep(GAP_MS);
        warm.push(await call(p, driver, s, `echo ${i} > /workspace/changed.txt && echo hi`));
        const top = path.join(store.dir, 'layers', (await store.current()).layers[0]!);
        layerBytes.push(statSync(top).blocks * 512);
      }
      const colds: CallTimes[] = [];
      for (let i = 0; i < Math.min(5, o.calls); i++) { await sleep(GAP_MS); colds.push(await call(p, driver, s, `echo cold${i} > /workspace/changed.txt && echo hi`, true)); }
      overhead[files] = round(median(warm.map((c) => c.overheadMs)));
      callMs[files] = round(median(warm.map((c) => c.callMs)));
      cold[files] = round(median(colds.map((c) => c.overheadMs)));
      o.log(`  ${files} files: persistence overhead p50 ${overhead[files]} ms (taking the prepared VM ${round(median(warm.map((c) => c.acquireMs)))}, `
        + `commit ${round(median(warm.map((c) => c.commitMs)))}), cold path ${cold[files]} ms; call p50 ${callMs[files]} ms`);
      if (files === 100_000) {
        const gib = 'head -c 67108864 /dev/urandom > /tmp/r && for i in $(seq 16); do cat /tmp/r; done > /workspace/gib.bin';
        await sleep(GAP_MS);
        const sb = await p.acquire(s, () => driver.acquire({ sessionId: s }));
        const shell = await p.prepare(s, sb);
        const w = await runTool('bash', { command: gib, timeout_ms: 600_000 }, { sandbox: sb, shell, callTimeoutMs: 600_000 });
        if (w.isError) throw new Error(w.text);
        const c0 = performance.now();
        await p.commit(s, sb, w.shell, {});
        out.commit1GiBMs = Math.round(performance.now() - c0);
        await sb.destroy();
        await store.idle();
        const compacting = await DiskStore.open(home, s, { bytes, keepGenerations: 0 });
        const k0 = performance.now();
        const merged = await compacting.compact();
        out.compactionMs = Math.round(performance.now() - k0);
        out.compactionMergedLayers = merged;
        o.log(`  1 GiB change committed in ${out.commit1GiBMs} ms; compaction merged ${merged} layer(s) in ${out.compactionMs} ms`);
      }
      await p.close();
    }
    out.persistOverheadMsP50 = overhead;
    out.callMsP50 = callMs;
    out.callRatio100k = round(callMs[100_000]! / callMs[0]! * 100) / 100;
    out.coldPathOverheadMsP50 = cold;
    out.hostBytesPerGenerationP50 = median(layerBytes);
    // The file store on the same calls, where a fresh VM's writable space can hold the workspace.
    const fileStore: Record<string, unknown> = {};
    for (const files of WORKSPACES) {
      if (files * Math.max(4096, FILE_BYTES[files]!) > 64 * 1024 * 1024) { fileStore[files] = 'does not fit in a VM\'s writable space'; continue; }
      const p = new Persistence({ home, persist: { ...persist, maxFiles: 200_000 } });
      const s = `sesn_bench_files_${files}`;
      const seed = await driver.acquire({ sessionId: s });
      await p.prepare(s, seed);
      await runTool('bash', { command: seedCommand(files), timeout_ms: 600_000 }, { sandbox: seed, shell: { cwd: '/workspace', env: {} }, callTimeoutMs: 600_000 });
      await p.commit(s, seed, null);
      await seed.destroy();
      const ms: number[] = [];
      for (let i = 0; i < Math.min(5, o.calls); i++) {
        await sleep(GAP_MS);
        const sb = await driver.acquire({ sessionId: s });
        const a = performance.now();
        const shell = await p.prepare(s, sb);
        const b = performance.now();
        const r = await runTool('bash', { command: `echo ${i} > /workspace/changed.txt && echo hi` }, { sandbox: sb, shell, callTimeoutMs: 600_000 });
        const c = performance.now();
        await p.commit(s, sb, r.shell);
        ms.push((b - a) + (performance.now() - c));
        await sb.destroy();
      }
      fileStore[files] = round(median(ms));
    }
    out.fileStoreOverheadMsP50 = fileStore;
    return out;
  } finally {
    await driver.close();
    rmSync(home, { recursive: true, force: true });
  }
}

// Standalone only: inside the bench bundle `require.main === module` holds too (it would run beside the chosen
// sections and end the bench with its process.exit), so the file name decides, as in persist-bench.ts.
if (/session-disk-bench\.ts$/.test(process.argv[1] ?? '')) {
  const json = process.argv.includes('--json');
  const i = process.argv.indexOf('--calls');
  const calls = i >= 0 ? Number(process.argv[i + 1]) : 11;
  sessionDiskBench({ calls, log: (l) => (json ? process.stderr : process.stdout).write(`${l}\n`) })
    .then((r) => { process.stdout.write(`${JSON.stringify(r, null, json ? 2 : 0)}\n`); process.exit(0); })
    .catch((err: Error) => { process.stderr.write(`${err.stack}\n`); process.exit(1); });
}
