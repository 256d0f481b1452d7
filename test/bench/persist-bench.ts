// Persisted-file benchmark (the `persist` section of `npm run bench`): the session-disk figures of
// session-disk-bench.ts (persistOverheadMsP50 keyed by workspace file count, callRatio100k, …), then copy-in (prepare) and copy-out (commit)
// times for a 10 000-file workspace with one changed file and with 100 MB changed, per sandbox driver (the process
// driver always; QEMU when a template is built). Called by test/bench/bench.ts; runnable alone with
// `npx tsx test/bench/persist-bench.ts [--json]`. Each measurement is the median of a few runs; both change-detection
// modes (config.persist.changeDetection: guest hashes vs size/mtime quick check) are measured.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { loadConfig } from '../../companion/config';
import { setStderrLogging } from '../../companion/log';
import { Persistence, type PersistSettings } from '../../companion/persist/persistence';
import { ProcessDriver } from '../../companion/sandbox/process/driver';
import { QemuDriver } from '../../companion/sandbox/qemu/driver';
import { findTemplate } from '../../companion/sandbox/template/manifest';
import type { SandboxDriver } from '../../companion/sandbox/types';
import type { PutFile } from '../../companion/guest/types';
import type { Metrics } from './bench';
import { sessionDiskBench } from './session-disk-bench';

export interface PersistBenchRow {
  driver: string;
  /** config.persist.changeDetection used for the commit. */
  mode: 'hash' | 'mtime';
  scenario: 'initial' | 'oneChanged' | 'bigChanged';
  copyInMs: number;
  copyOutMs: number;
  files: number;
  changedBytes: number;
}

const WORKSPACE_FILES = 10_000;
const FILE_BYTES = 1024;
const BIG_CHANGE_FILE_BYTES = 1024 * 1024;
const RUNS = 3;

function median(xs: number[]): number { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]!; }

async function time<T>(fn: () => Promise<T>): Promise<[number, T]> { const t = performance.now(); const r = await fn(); return [performance.now() - t, r]; }

function workspaceFiles(): PutFile[] {
  const out: PutFile[] = [];
  for (let i = 0; i < WORKSPACE_FILES; i++) out.push({ path: `/workspace/src/d${Math.floor(i / 100)}/f${i}.txt`, data: randomBytes(FILE_BYTES), mode: 0o644 });
  return out;
}

/** `bigChangeFiles` × 1 MiB is the large change; a 256 MiB template VM has a 128 MiB writable layer, which 10 000
 *  small files (one page each) plus 100 MiB do not fit in, so VMs measure the largest change that fits. */
async function benchDriver(name: string, driver: SandboxDriver, bigChangeFiles: number, runs: number): Promise<PersistBenchRow[]> {
  const home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-bench-persist-'));
  // One Persistence for the whole run (one cache per store); the change-detection mode is switched between phases.
  const settings: PersistSettings = { defaults: ['/workspace'], maxBytes: 1024 * 1024 * 1024, maxFiles: 200_000, keepGenerations: 3, changeDetection: 'hash' };
  const persistence = new Persistence({ home, persist: settings });
  const session = 'sesn_bench';
  const rows: PersistBenchRow[] = [];
  try {
    // Generation 1: the 10 000-file workspace (copied out once, in full).
    const seed = await driver.acquire({ sessionId: session });
    await persistence.prepare(session, seed);
    const files = workspaceFiles();
    for (let i = 0; i < files.length; i += 1000) await seed.putFiles(files.slice(i, i + 1000), []);
    const [initialOut, report] = await time(() => persistence.commit(session, seed, null));
    if (report.notes.length) throw new Error(`seed commit: ${report.notes.join('; ')}`);
    await seed.destroy();
    rows.push({ driver: name, mode: 'hash', scenario: 'initial', copyInMs: 0, copyOutMs: initialOut, files: WORKSPACE_FILES, changedBytes: WORKSPACE_FILES * FILE_BYTES });

    for (const mode of ['hash', 'mtime'] as const) {
      settings.changeDetection = mode;
      const one = { ins: [] as number[], outs: [] as number[] };
      for (let r = 0; r < runs; r++) {
        const sb = await driver.acquire({ sessionId: session });
        const [inMs] = await time(() => persistence.prepare(session, sb));
        await sb.writeFile(`/workspace/src/d0/f${r}.txt`, randomBytes(FILE_BYTES));
        const [outMs, rep] = await time(() => persistence.commit(session, sb, null));
        if (rep.generation === 0 || rep.notes.length) throw new Error(`1-file commit: ${rep.notes.join('; ')}`);
        await sb.destroy();
        one.ins.push(inMs); one.outs.push(outMs);
      }
      rows.push({ driver: name, mode, scenario: 'oneChanged', copyInMs: median(one.ins), copyOutMs: median(one.outs), files: WORKSPACE_FILES, changedBytes: FILE_BYTES });

      const big = { ins: [] as number[], outs: [] as number[] };
      for (let r = 0; r < runs; r++) {
        const sb = await driver.acquire({ sessionId: session });
        await persistence.prepare(session, sb);
        const changed: PutFile[] = [];
        for (let i = 0; i < bigChangeFiles; i++) changed.push({ path: `/workspace/data/b${i}.bin`, data: randomBytes(BIG_CHANGE_FILE_BYTES), mode: 0o644 });
        for (let i = 0; i < changed.length; i += 20) await sb.putFiles(changed.slice(i, i + 20), []);
        const [outMs, rep] = await time(() => persistence.commit(session, sb, null));
        if (rep.notes.length) throw new Error(`large commit: ${rep.notes.join('; ')}`);
        await sb.destroy();
        const next = await driver.acquire({ sessionId: session });
        const [inMs] = await time(() => persistence.prepare(session, next));
        await next.destroy();
        big.ins.push(inMs); big.outs.push(outMs);
      }
      rows.push({ driver: name, mode, scenario: 'bigChanged', copyInMs: median(big.ins), copyOutMs: median(big.outs), files: WORKSPACE_FILES + bigChangeFiles, changedBytes: bigChangeFiles * BIG_CHANGE_FILE_BYTES });
    }
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
  return rows;
}

/** Runs the persistence benchmark on every driver that can run here. */
export async function runPersistBench(log: (line: string) => void = () => {}, runs = RUNS): Promise<PersistBenchRow[]> {
  const rows: PersistBenchRow[] = [];
  const base = mkdtempSync(path.join(os.tmpdir(), 'perimeter-bench-sbx-'));
  const proc = new ProcessDriver({ baseDir: base });
  try {
    log('  persist: process driver…');
    rows.push(...await benchDriver('process', proc, 100, runs));
  } finally { await proc.close(); rmSync(base, { recursive: true, force: true }); }
  const config = loadConfig({ sandbox: { poolSize: 0 } });
  let template = null;
  try { template = findTemplate(config.home, config.sandbox.template); } catch { template = null; }
  if (template) {
    const qemu = new QemuDriver(config);
    try {
      log('  persist: qemu driver…');
      const writableMiB = Math.min(config.sandbox.diskMiB, Math.floor(template.manifest.memoryMiB / 2));
      rows.push(...await benchDriver(`qemu (${(await qemu.probe()).accel})`, qemu, Math.min(100, Math.max(8, writableMiB - 64)), runs));
    } finally { await qemu.close(); }
  } else {
    log(`  persist: qemu skipped (no template under ${config.home}; run perimeter template build)`);
  }
  return rows;
}

/** The `persist` section of test/bench/bench.ts: flat metrics per driver and scenario. */
export const persistSection = {
  name: 'persist',
  about: 'persisted files: session disks (persistence overhead per call for 0, 10 000 and 100 000 files, the call ratio, the cold path, a 1 GiB commit, compaction) and the file store (copy-in and copy-out of a 10 000-file workspace)',
  needsVm: false,
  async run(ctx: { n: number; log(line: string): void }): Promise<Metrics> {
    const out: Metrics = {};
    try {
      Object.assign(out, await sessionDiskBench({ calls: 11, log: ctx.log }) as Metrics);
    } catch (err) {
      out.sessionDiskError = (err as Error).message;
    }
    const rows = await runPersistBench(ctx.log, Math.max(1, Math.min(ctx.n, RUNS)));
    for (const r of rows) {
      const key = `persist${r.driver.startsWith('qemu') ? 'Qemu' : 'Process'}${r.scenario[0]!.toUpperCase()}${r.scenario.slice(1)}${r.scenario === 'initial' ? '' : r.mode === 'hash' ? 'Hash' : 'Mtime'}`;
      if (r.copyInMs) out[`${key}CopyInMs`] = Math.round(r.copyInMs);
      out[`${key}CopyOutMs`] = Math.round(r.copyOutMs);
      if (r.scenario === 'bigChanged') out[`${key}MiB`] = Math.round(r.changedBytes / (1024 * 1024));
    }
    return out;
  },
};

const SCENARIOS = {
  initial: (r: PersistBenchRow) => `${r.files} files, all new (first commit)`,
  oneChanged: (r: PersistBenchRow) => `${r.files} files, 1 changed`,
  bigChanged: (r: PersistBenchRow) => `10 000 files + ${Math.round(r.changedBytes / 1048576)} MiB changed (copy-in = next call, all of it)`,
};

export function persistBenchTable(rows: PersistBenchRow[]): string {
  return [
    '| driver | change detection | scenario | copy-in (prepare) | copy-out (commit) |',
    '|---|---|---|---:|---:|',
    ...rows.map((r) => `| ${r.driver} | ${r.scenario === 'initial' ? '–' : r.mode} | ${SCENARIOS[r.scenario](r)} | ${r.copyInMs ? `${r.copyInMs.toFixed(0)} ms` : '–'} | ${r.copyOutMs.toFixed(0)} ms |`),
  ].join('\n');
}

// Standalone only (`npx tsx test/bench/persist-bench.ts`); inside the bench bundle `require.main === module` would
// also hold, so the file name decides.
if (/persist-bench\.ts$/.test(process.argv[1] ?? '')) {
  setStderrLogging(false);
  void runPersistBench((l) => process.stderr.write(`${l}\n`)).then((rows) => {
    process.stdout.write(`${process.argv.includes('--json') ? JSON.stringify(rows, null, 1) : persistBenchTable(rows)}\n`);
  }, (err) => { process.stderr.write(`${(err as Error).stack}\n`); process.exit(1); });
}
