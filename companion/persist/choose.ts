// Which persistence a companion uses: session disks (persist/disk/) when the sandbox driver's VMs have a session-disk
// device (a template built with one, under QEMU or Firecracker), else the file store (persistence.ts; the process
// driver, and templates built before session disks). Invariant: a session disk never exceeds the device: persist.maxBytes larger
// than the template's disk is capped (and said once), a smaller one makes smaller disks. Disk generations are read
// from the host through browse VMs of the default template, with no network; the disks of sessions that ended
// persist.retainDays ago (terminated, or archived or terminated as the service says: `sessionEnd`) are deleted at
// start and every COLLECT_EVERY_MS.
import type { Config } from '../config';
import type { EventHub } from '../events';
import { logger } from '../log';
import type { SandboxDriver } from '../sandbox/types';
import { formatBytes } from '../protocol/format';
import { Persistence } from './persistence';
import { DiskPersistence } from './disk/persistence';
import type { MemoryMountResolver } from './types';

const log = logger('persist');
/** How often a companion deletes the disks of sessions that ended persist.retainDays ago. */
const COLLECT_EVERY_MS = 6 * 60 * 60 * 1000;

export function choosePersistence(o: { config: Config; driver: SandboxDriver; hub?: EventHub; memoryMounts?: MemoryMountResolver; sessionEnd?: (sessionId: string) => Promise<number | null> }): Persistence | DiskPersistence {
  const { home } = o.config;
  const device = o.driver.sessionDiskBytes?.() ?? null;
  if (device === null) return new Persistence({ home, persist: o.config.persist, hub: o.hub, memoryMounts: o.memoryMounts });
  let persist = o.config.persist;
  if (persist.maxBytes > device) {
    log.warn(`persist.maxBytes (${formatBytes(persist.maxBytes)}) is larger than the template's session disk (${formatBytes(device)}): new session disks get ${formatBytes(device)}; rebuild the template (perimeter template build) for larger ones`);
    persist = { ...persist, maxBytes: device };
  }
  // The file store keeps the persist list (and files of sessions from before their disk); memory stores are the disk
  // persistence's to mirror.
  const files = new Persistence({ home, persist, hub: o.hub });
  return new DiskPersistence({
    home, persist, files, hub: o.hub, memoryMounts: o.memoryMounts, mode: o.config.sandbox.mode,
    browse: () => o.driver.acquire({ sessionId: 'perimeter-browse' }), collectEveryMs: COLLECT_EVERY_MS, sessionEnd: o.sessionEnd,
  });
}
