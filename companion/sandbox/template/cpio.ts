// Writes an uncompressed `newc` cpio archive (the initramfs format the kernel unpacks), so building the initramfs
// needs no external tool. Invariant: entries are written in the given order; parents must precede children.
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
