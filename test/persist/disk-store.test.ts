// The session-disk store without VMs: layers are written with qemu-io through the same explicit chains a VM is given,
// and read back the same way. Commit, conflicts, crash leftovers, rollback and compaction (the content of every kept
// generation stays exactly what it was, the chain gets short, merged layers go). Skips when qemu-img, qemu-io or
// mke2fs is missing.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { DiskConflictError, DiskStore, chainSpec, type DiskGeneration } from '../../companion/persist/disk/store';
import { tempDir } from './helpers';

const ROOT = path.resolve(__dirname, '..', '..');
const MiB = 1024 * 1024;
const BYTES = 64 * MiB;

function toolsMissing(): string | null {
  for (const t of ['qemu-img', 'qemu-io', 'mke2fs']) {
    try { execFileSync('sh', ['-c', `command -v ${t}`], { stdio: 'ignore' }); } catch { return `${t} is not installed`; }
  }
  return null;
}

const io = (chain: string[], cmds: string[], readOnly = false) => execFileSync('qemu-io', [...(readOnly ? ['-r'] : []), ...cmds.flatMap((c) => ['-c', c]), `json:${JSON.stringify(chainSpec(chain))}`], { encoding: 'utf8' });

/** Writes byte `pattern` over 64 KiB at `mib` MiB into a new generation. */
async function commitPattern(store: DiskStore, writes: Array<[mib: number, pattern: number]>): Promise<DiskGeneration> {
  const over = await store.current();
  const pending = await store.newLayer(over);
  io([pending.path, ...store.chain(over)], writes.map(([mib, p]) => `write -P ${p} ${mib}M 64k`));
  return store.commit(pending, { shell: { cwd: '/workspace', env: { N: String(over.generation + 1) } }, usage: null });
}

/** Whether a generation reads `pattern` (0 = never written) at each offset. */
function holds(store: DiskStore, gen: DiskGeneration, expect: Array<[mib: number, pattern: number]>): boolean {
  const out = io(store.chain(gen), expect.map(([mib, p]) => `read -P ${p} ${mib}M 64k`), true);
  return !/Pattern verification failed/.test(out) && (out.match(/read 65536\/65536/g) ?? []).length === expect.length;
}

describe('persist: the session-disk store (qemu-io, no VMs)', function () {
  this.timeout(120_000);
  let home: string;
  before(function () { const why = toolsMissing(); if (why) { console.log(`      SKIPPED: ${why}`); this.skip(); } });
  beforeEach(() => { home = tempDir('disk-store'); });
  afterEach(() => { rmSync(home, { recursive: true, force: true }); });

  it('starts at generation 0 (its own blank base), commits layers in order, and makes them read-only', async () => {
    const store = await DiskStore.open(home, 'sesn_a', { bytes: BYTES, keepGenerations: 3 });
    const g0 = await store.current();
    assert.equal(g0.generation, 0);
    assert.equal(g0.layers.length, 1);
    assert.match(execFileSync('qemu-img', ['info', '--output=json', store.chain(g0)[0]!], { encoding: 'utf8' }), new RegExp(`"virtual-size": ${BYTES}`));
    const g1 = await commitPattern(store, [[1, 0x11]]);
    const g2 = await commitPattern(store, [[2, 0x22]]);
    assert.deepEqual([g1.generation, g2.generation, g2.parent, g2.shell?.env.N], [1, 2, 1, '2']);
    assert.equal(readFileSync(path.join(store.dir, 'CURRENT'), 'utf8'), '2\n');
    assert.equal(statSync(store.chain(g2)[0]!).mode & 0o777, 0o444);
    assert.ok(holds(store, g2, [[1, 0x11], [2, 0x22]]));
    assert.ok(holds(store, g1, [[1, 0x11], [2, 0]]));
  });

  it('refuses a layer made over a generation that is no longer CURRENT, changing nothing', async () => {
    const store = await DiskStore.open(home, 'sesn_b', { bytes: BYTES, keepGenerations: 3 });
    const over = await store.current();
    const first = await store.newLayer(over);
    const second = await store.newLayer(over);
    await store.commit(first, { shell: null, usage: null });
    await assert.rejects(store.commit(second, { shell: null, usage: null }), DiskConflictError);
    assert.equal((await store.current()).generation, 1);
    assert.deepEqual((await store.list()).map((g) => g.generation), [1, 0]);
  });

  it('removes what a crash left (uncommitted layers, records newer than CURRENT, temporary files) when opened again', async () => {
    const store = await DiskStore.open(home, 'sesn_c', { bytes: BYTES, keepGenerations: 3 });
    const g1 = await commitPattern(store, [[1, 0x11]]);
    const orphan = await store.newLayer(g1);
    writeFileSync(path.join(store.dir, 'gen-2.json'), JSON.stringify({ ...g1, generation: 2, layers: [path.basename(orphan.path), ...g1.layers] }));
    writeFileSync(path.join(store.dir, '.current-deadbeef'), '2\n');
    const again = await DiskStore.open(home, 'sesn_c', { bytes: BYTES, keepGenerations: 3 });
    assert.equal((await again.current()).generation, 1);
    assert.equal(existsSync(orphan.path), false);
    assert.deepEqual(readdirSync(again.dir).sort(), ['CURRENT', 'gen-0.json', 'gen-1.json', 'layers']);
    assert.ok(holds(again, await again.current(), [[1, 0x11]]));
  });

  it('rollback makes an older generation\'s content the next generation; the newer ones stay', async () => {
    const store = await DiskStore.open(home, 'sesn_d', { bytes: BYTES, keepGenerations: 5 });
    await commitPattern(store, [[1, 0x11]]);
    await commitPattern(store, [[1, 0x12], [2, 0x22]]);
    const back = await store.rollback(1);
    assert.deepEqual([back.generation, back.rolledBackFrom, back.parent], [3, 1, 1]);
    assert.ok(holds(store, await store.current(), [[1, 0x11], [2, 0]]));
    assert.ok(holds(store, (await store.get(2))!, [[1, 0x12], [2, 0x22]]));
    await assert.rejects(store.rollback(42), /no generation 42 \(kept: 0, 1, 2, 3\)/);
    const g4 = await commitPattern(store, [[3, 0x33]]);
    assert.ok(holds(store, g4, [[1, 0x11], [2, 0], [3, 0x33]]));
  });

  it('perimeter persist rollback --session ID --to N: a new generation with N\'s content; an unknown one is refused', async () => {
    const store = await DiskStore.open(home, 'sesn_cli', { bytes: BYTES, keepGenerations: 3 });
    await commitPattern(store, [[1, 0x11]]);
    await commitPattern(store, [[1, 0x12]]);
    const cli = (...args: string[]) => spawnSync(process.execPath, ['--import=tsx', path.join(ROOT, 'companion/cli.ts'), 'persist', 'rollback', '--home', home, ...args], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, PERIMETER_HOME: '' } });
    const ok = cli('--session', 'sesn_cli', '--to', '1', '--json');
    assert.equal(ok.status, 0, ok.stderr);
    assert.equal(JSON.parse(ok.stdout).generation, 3);
    const reopened = await DiskStore.open(home, 'sesn_cli', { bytes: BYTES, keepGenerations: 3 });
    assert.ok(holds(reopened, await reopened.current(), [[1, 0x11]]));
    const unknown = cli('--session', 'sesn_cli', '--to', '9');
    assert.equal(unknown.status, 1);
    assert.match(unknown.stderr, /keeps no generation 9/);
    assert.equal((await reopened.current()).generation, 3);
  });

  it('compaction keeps every kept generation\'s content, bounds the chain and deletes the merged layers', async () => {
    const keep = 1;
    const store = await DiskStore.open(home, 'sesn_e', { bytes: BYTES, keepGenerations: keep });
    const expected = new Map<number, Array<[number, number]>>();
    let state: Array<[number, number]> = [];
    for (let g = 1; g <= 8; g++) {
      // each generation writes its own offset and overwrites offset 0
      const writes: Array<[number, number]> = [[0, g], [g, 0x40 + g]];
      await commitPattern(store, writes);
      state = [...state.filter(([mib]) => mib !== 0), ...writes];
      expected.set(g, state);
      await store.idle();
    }
    const gens = await store.list();
    assert.deepEqual(gens.map((g) => g.generation), [8, 7]);
    for (const g of gens) assert.ok(holds(store, g, expected.get(g.generation)!), `generation ${g.generation} changed`);
    assert.ok(gens[0]!.layers.length <= keep + 1 + 2, `chain of ${gens[0]!.layers.length} layers`);
    const referenced = new Set(gens.flatMap((g) => g.layers));
    assert.deepEqual(readdirSync(path.join(store.dir, 'layers')).sort(), [...referenced].sort());
  });

  it('compaction never changes a chain a reader holds, even of a generation pruned meanwhile; it runs once the reader lets go', async () => {
    // A browse VM reading the oldest kept generation (here generation 0, the bare base) while calls commit: when its
    // record is pruned and compaction would merge the next layer into the base, the reader's content must not move.
    const store = await DiskStore.open(home, 'sesn_f', { bytes: BYTES, keepGenerations: 1 });
    await commitPattern(store, [[1, 0x41]]);
    const reader = await store.openLayer(async () => {}, 0);
    const readerChain = [reader.path, ...store.chain(reader.over)];
    const blank: Array<[number, number]> = [[1, 0], [2, 0], [6, 0]];
    assert.ok(holds(store, reader.over, blank));
    for (let g = 2; g <= 6; g++) { await commitPattern(store, [[g, 0x40 + g]]); await store.idle(); }
    assert.deepEqual((await store.list()).map((g) => g.generation), [6, 5], 'generation 0 is pruned while the reader holds it');
    // what the reader's VM sees through the chain it opened: generation 0, untouched
    const seen = io(readerChain, blank.map(([mib]) => `read -P 0 ${mib}M 64k`), true);
    assert.doesNotMatch(seen, /Pattern verification failed/, 'the base changed under a reader');
    assert.equal((seen.match(/read 65536\/65536/g) ?? []).length, blank.length);
    assert.equal((await store.current()).layers.length, 7, 'no compaction while the reader holds the bare base');
    await store.discard(reader);
    await store.idle();
    const top = await store.current();
    assert.ok(top.layers.length <= 1 + 1 + 2, `chain of ${top.layers.length} layers after the reader let go`);
    assert.ok(holds(store, top, [[1, 0x41], [2, 0x42], [6, 0x46]]));
  });
});
