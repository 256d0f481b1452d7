// Bench section `fcdisk`: the raw export a Firecracker VM's session disk goes through (companion/sandbox/firecracker/
// disk-export.ts), on this machine, without Firecracker (it cannot run here): a real qemu-storage-daemon FUSE export
// of a real session-disk store's chain. Measured: attaching (a new layer over CURRENT + the export mounted), ending it
// cleanly at the end of a call (flush, exit, unmount) and the commit after it, and sequential throughput through the
// raw file (1 MiB writes then reads, what Firecracker's Sync engine does per request, with the host's page cache of
// the FUSE file in play). Needs root, /dev/fuse and qemu-storage-daemon.
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import path from 'node:path';
import { DiskStore } from '../../companion/persist/disk/store';
import { RawExport, exportMissing } from '../../companion/sandbox/firecracker/disk-export';
import { p50, type BenchContext, type Metrics } from './bench';

const MiB = 1024 * 1024;
const THROUGHPUT_BYTES = 256 * MiB;

export const firecrackerDiskSection = {
  name: 'fcdisk',
  about: 'Firecracker session disks without Firecracker: a real qemu-storage-daemon FUSE raw export of the store\'s chain (attach, end + commit, MiB/s through the raw file)',
  needsVm: false,
  async run(ctx: BenchContext): Promise<Metrics> {
    const missing = exportMissing();
    if (missing) return { fcdiskSkipped: `needs ${missing}` };
    const home = mkdtempSync(path.join(ctx.tmp, 'fcdisk-'));
    const store = await DiskStore.open(home, 'sesn_bench', { bytes: 1024 * MiB, keepGenerations: 3 });
    const attach: number[] = [], end: number[] = [], commit: number[] = [];
    let writeMiBs = 0, readMiBs = 0;
    try {
      for (let i = 0; i < ctx.n; i++) {
        let exp: RawExport | null = null;
        const file = path.join(home, `sdisk-${i}.raw`);
        const t0 = performance.now();
        const pending = await store.openLayer(async (layer, backing) => {
          exp = await RawExport.start({ layers: [layer.path, ...backing], mountpoint: file, pidFile: path.join(home, `qsd-${i}.pid`) });
        });
        const t1 = performance.now();
        if (i === 0) ({ writeMiBs, readMiBs } = throughput(file));
        else writeBlock(file, i);
        const t2 = performance.now();
        await exp!.stop();
        const t3 = performance.now();
        await store.commit(pending, { shell: null, usage: null });
        const t4 = performance.now();
        attach.push(t1 - t0); end.push(t3 - t2); commit.push(t4 - t3);
      }
      ctx.log(`fcdisk: attach p50 ${p50(attach)} ms, end ${p50(end)} ms, commit ${p50(commit)} ms; raw file ${writeMiBs} MiB/s write, ${readMiBs} MiB/s read`);
      return { fcdiskAttachMsP50: p50(attach), fcdiskEndMsP50: p50(end), fcdiskCommitMsP50: p50(commit), fcdiskWriteMiBs: writeMiBs, fcdiskReadMiBs: readMiBs };
    } finally {
      await store.idle();
      rmSync(home, { recursive: true, force: true });
    }
  },
};

function writeBlock(file: string, i: number): void {
  const fd = openSync(file, 'r+');
  try { writeSync(fd, Buffer.alloc(4096, i), 0, 4096, 32 * MiB); } finally { closeSync(fd); }
}

function throughput(file: string): { writeMiBs: number; readMiBs: number } {
  const buf = Buffer.alloc(MiB, 0x5a);
  const fd = openSync(file, 'r+');
  try {
    const t0 = performance.now();
    for (let off = 0; off < THROUGHPUT_BYTES; off += MiB) writeSync(fd, buf, 0, MiB, off);
    const t1 = performance.now();
    for (let off = 0; off < THROUGHPUT_BYTES; off += MiB) readSync(fd, buf, 0, MiB, off);
    const t2 = performance.now();
    const rate = (ms: number) => Math.round(THROUGHPUT_BYTES / MiB / (ms / 1000));
    return { writeMiBs: rate(t1 - t0), readMiBs: rate(t2 - t1) };
  } finally { closeSync(fd); }
}
