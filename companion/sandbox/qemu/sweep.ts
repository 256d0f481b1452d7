// Startup sweep of VMs (QEMU or Firecracker) a previous companion left behind (it was SIGKILLed, crashed, or the machine lost power).
// Invariants: a run directory whose owner process is still alive (another live companion using the same home) is
// left alone; a QEMU (or the jail around it, whose pid the launcher records in jail.pid: killing it takes the whole
// PID namespace down) is killed only if its pidfile names a live process whose command line is a QEMU or jail started
// with that very run directory, so a recycled pid is never killed by mistake.
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';

function cmdline(pid: number): string | null {
  try { return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' '); } catch { return null; }
}

function readPid(file: string): number | null {
  try { const n = Number(readFileSync(file, 'utf8').trim()); return Number.isInteger(n) && n > 1 ? n : null; } catch { return null; }
}

/** Kills orphaned QEMUs and removes their run directories; returns how many processes were killed. */
export function sweepOrphans(vmsDir: string): number {
  if (!existsSync(vmsDir)) return 0;
  let killed = 0;
  for (const name of readdirSync(vmsDir)) {
    const dir = path.join(vmsDir, name);
    const owner = readPid(path.join(dir, 'owner'));
    if (owner === process.pid) continue;
    const ownerCmd = owner ? cmdline(owner) : null;
    if (ownerCmd && /node|perimeter/.test(ownerCmd)) continue; // a live companion owns it
    for (const pidFile of ['qemu.pid', 'vmm.pid', 'jail.pid']) {
      const vmm = readPid(path.join(dir, pidFile));
      const vmmCmd = vmm ? cmdline(vmm) : null;
      if (vmm && vmmCmd && /qemu-system|firecracker|bwrap/.test(vmmCmd) && vmmCmd.includes(dir)) {
        try { process.kill(vmm, 'SIGKILL'); killed++; } catch { /* exited meanwhile */ }
      }
    }
    rmSync(dir, { recursive: true, force: true });
  }
  return killed;
}
