// Startup sweep of VMs (QEMU or Firecracker) a previous companion left behind (it was SIGKILLed, crashed, or the machine lost power).
// Invariants: a run directory whose owner process is still alive (another live companion using the same home) is
// left alone; a QEMU (or the jail around it, whose pid the launcher records in jail.pid: killing it takes the whole
// PID namespace down) is killed only if its pidfile names a live process whose command line is a QEMU or jail started
// with that very run directory, so a recycled pid is never killed by mistake. The same holds for the
// qemu-storage-daemon of a Firecracker VM's session disk (qsd-*.pid) and a jailed Firecracker (firecracker.pid, its
// command line naming the jail's VM id); a FUSE mount left in the run directory (its qsd was killed) and the jail
// root's own bind mount are unmounted before the directory is removed.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';

/** The mount points of this mount namespace (octal escapes of /proc/self/mountinfo decoded). */
export function mountPoints(): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter(Boolean)
    .map((l) => l.split(' ')[4]!.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))));
}

/** Lazily unmounts everything mounted at or below `dir` (deepest first); returns how many mounts were removed. */
export function unmountUnder(dir: string): number {
  const root = path.resolve(dir);
  const under = mountPoints().filter((m) => m === root || m.startsWith(`${root}/`)).sort((a, b) => b.length - a.length);
  for (const m of under) {
    try { execFileSync('umount', ['-l', m], { env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' }, stdio: 'ignore', timeout: 10_000 }); } catch {
      throw new Error(`cannot unmount ${path.relative(root, m) || '.'} in ${path.basename(root)}`);
    }
  }
  return under.length;
}

function cmdline(pid: number): string | null {
  try { return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' '); } catch { return null; }
}

function readPid(file: string): number | null {
  try { const n = Number(readFileSync(file, 'utf8').trim()); return Number.isInteger(n) && n > 1 ? n : null; } catch { return null; }
}

/** Kills orphaned QEMUs and removes their run directories (`<vmsDir>/<name>`, whose files are in `inner` below it,
 *  as in a jailer's `<id>/root`); returns how many processes were killed. */
export function sweepOrphans(vmsDir: string, inner = ''): number {
  if (!existsSync(vmsDir)) return 0;
  let killed = 0;
  for (const name of readdirSync(vmsDir)) {
    const top = path.join(vmsDir, name);
    const dir = path.join(top, inner);
    let files: string[];
    try { files = readdirSync(dir); } catch { files = []; }
    const owner = readPid(path.join(dir, 'owner'));
    if (owner === process.pid) continue;
    const ownerCmd = owner ? cmdline(owner) : null;
    if (ownerCmd && /node|perimeter/.test(ownerCmd)) continue; // a live companion owns it
    const pidFiles = ['qemu.pid', 'vmm.pid', 'jail.pid', 'firecracker.pid', ...files.filter((f) => /^qsd-[\w.-]+\.pid$/.test(f))];
    for (const pidFile of pidFiles) {
      const vmm = readPid(path.join(dir, pidFile));
      const vmmCmd = vmm ? cmdline(vmm) : null;
      // a jailed Firecracker's command line names its VM id (the jail directory), not the directory
      if (vmm && vmmCmd && /qemu-system|qemu-storage-daemon|firecracker|bwrap/.test(vmmCmd) && (vmmCmd.includes(dir) || (inner !== '' && vmmCmd.includes(`--id ${name} `)))) {
        try { process.kill(vmm, 'SIGKILL'); killed++; } catch { /* exited meanwhile */ }
      }
    }
    try { unmountUnder(top); } catch { continue; } // a mount that stays makes the directory unremovable: kept
    rmSync(top, { recursive: true, force: true });
  }
  return killed;
}
