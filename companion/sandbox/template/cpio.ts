// Writes an uncompressed `newc` cpio archive (the initramfs format the kernel unpacks). Invariants: entries are
// written in the given order (parents must precede children); the bytes depend on the entries alone (inode numbers
// in entry order, owner, group and mtime 0), because the template is content-addressed by them (build.ts).
// Kept instead of Debian's cpio(1) for a measured reason (agent initramfs, 733 KB): `cpio -o -H newc` over a staged
// tree writes the staging files' inode, device and mtime, so each build gets a new template hash and the "already
// built" path never hits; with zeroed mtimes and `--reproducible -R 0:0` it repeats itself, but its bytes still
// differ from these (inode 0, directory nlink 2, 512-byte padding), so every existing template would be rebuilt once,
// and it adds a host package `template build` does not need now (25–33 ms with staging vs 0.7 ms here).
// test/unit/template-build.test.ts checks the output with cpio(1).
export interface CpioEntry { name: string; mode: number; data?: Buffer }

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;

function header(name: string, mode: number, size: number, ino: number): Buffer {
  const fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, Buffer.byteLength(name) + 1, 0];
  return Buffer.from('070701' + fields.map((f) => f.toString(16).padStart(8, '0')).join(''), 'latin1');
}

const pad4 = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);

export function writeCpio(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let size = 0;
  const push = (b: Buffer) => { parts.push(b); size += b.length; };
  let ino = 1;
  for (const e of [...entries, { name: 'TRAILER!!!', mode: 0 }]) {
    const isTrailer = e.name === 'TRAILER!!!';
    const data = e.data ?? Buffer.alloc(0);
    const mode = isTrailer ? 0 : (e.data ? S_IFREG : S_IFDIR) | (e.mode & 0o7777);
    push(header(e.name, mode, data.length, isTrailer ? 0 : ino++));
    push(Buffer.from(e.name + '\0', 'utf8'));
    push(pad4(size));
    if (data.length) { push(data); push(pad4(size)); }
  }
  return Buffer.concat(parts, size);
}
