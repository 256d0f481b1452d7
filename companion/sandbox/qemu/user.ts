// Which uid QEMU runs as. A companion running as a normal user starts QEMU as itself (the supported setup: a user
// in the `kvm` group). A companion running as root drops QEMU to `nobody` when that is feasible — every template
// file and the run directory reachable by that uid, and the template's RAM file owned by it (QEMU 7.2 opens it
// read-write even for a private copy-on-write mapping) — and otherwise keeps root, confined by QEMU's seccomp
// `-sandbox`, and says so. Invariant: never guesses; every condition is checked on the real paths.
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';

export interface QemuUser { uid: number; gid: number; name: string }
export type QemuUserChoice = { user: QemuUser; reason: string } | { user: null; reason: string };

export function lookupUser(name: string): QemuUser | null {
  try {
    for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const f = line.split(':');
      if (f[0] === name && f.length >= 4) return { name, uid: Number(f[2]), gid: Number(f[3]) };
    }
  } catch { /* no passwd file */ }
  return null;
}

/** True when every ancestor directory of `p` lets "others" search it (so `user` can reach `p`). */
function traversable(p: string): boolean {
  for (let d = path.dirname(path.resolve(p)); ; d = path.dirname(d)) {
    try { if ((statSync(d).mode & 0o001) === 0) return false; } catch { /* not created yet: we create it searchable (0711) */ }
    if (d === '/') return true;
  }
}

export function chooseQemuUser(o: { readOnlyFiles: string[]; memFile: string; vmsDir: string }): QemuUserChoice {
  if (process.getuid?.() !== 0) return { user: null, reason: 'QEMU runs as the companion\'s own (unprivileged) user' };
  const nobody = lookupUser('nobody');
  if (!nobody) return { user: null, reason: 'running as root and no `nobody` user exists: QEMU keeps root (confined by -sandbox seccomp)' };
  const blocked = [...o.readOnlyFiles, o.memFile, path.join(o.vmsDir, 'x')].find((f) => !traversable(f));
  if (blocked) {
    return { user: null, reason: `running as root, but ${path.dirname(blocked)} is not reachable by ${nobody.name}: QEMU keeps root (confined by -sandbox seccomp); put PERIMETER_HOME in a world-searchable directory (e.g. /var/lib/perimeter) or run the companion as an unprivileged user` };
  }
  for (const f of o.readOnlyFiles) {
    if ((statSync(f).mode & 0o004) === 0) return { user: null, reason: `running as root, but ${f} is not world-readable: QEMU keeps root` };
  }
  const mem = statSync(o.memFile);
  if (mem.uid !== nobody.uid || (mem.mode & 0o200) === 0) return { user: null, reason: `running as root, but ${o.memFile} is not owned and writable by ${nobody.name} (rebuild the template): QEMU keeps root` };
  return { user: nobody, reason: `running as root: QEMU drops to ${nobody.name} (uid ${nobody.uid})` };
}
