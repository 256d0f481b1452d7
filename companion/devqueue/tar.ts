// A minimal ustar writer for the dev queue's generated skill archives (regular files and their directories only,
// gzip-compressed). Paths must be relative, `/`-separated and shorter than 100 bytes.
import { gzipSync } from 'node:zlib';

function header(name: string, size: number, mode: number, type: '0' | '5', mtime: number): Buffer {
  const h = Buffer.alloc(512);
  const put = (s: string, off: number, len: number) => h.write(s, off, len, 'utf8');
  const oct = (n: number, len: number) => n.toString(8).padStart(len - 1, '0') + '\0';
  if (Buffer.byteLength(name) >= 100) throw new Error(`tar: name too long: ${name}`);
  put(name, 0, 100);
  put(oct(mode, 8), 100, 8);
  put(oct(0, 8), 108, 8);
  put(oct(0, 8), 116, 8);
  put(oct(size, 12), 124, 12);
  put(oct(Math.floor(mtime / 1000), 12), 136, 12);
  put('        ', 148, 8);
  put(type, 156, 1);
  put('ustar\0', 257, 6);
  put('00', 263, 2);
  let sum = 0;
  for (const b of h) sum += b;
  put(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8);
  return h;
}

/** Builds a .tar.gz from `files` (relative path -> content); parent directories are added automatically. */
export function tarGz(files: Record<string, string | Buffer>, mtime = Date.now()): Buffer {
  const parts: Buffer[] = [];
  const dirs = new Set<string>();
  for (const name of Object.keys(files).sort()) {
    if (name.startsWith('/') || name.split('/').includes('..')) throw new Error(`tar: unsafe name ${name}`);
    const segs = name.split('/');
    for (let i = 1; i < segs.length; i++) {
      const d = `${segs.slice(0, i).join('/')}/`;
      if (!dirs.has(d)) { dirs.add(d); parts.push(header(d, 0, 0o755, '5', mtime)); }
    }
    const data = Buffer.isBuffer(files[name]) ? (files[name] as Buffer) : Buffer.from(files[name] as string, 'utf8');
    const mode = /\.(sh|py)$/.test(name) ? 0o755 : 0o644;
    parts.push(header(name, data.length, mode, '0', mtime), data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  parts.push(Buffer.alloc(1024));
  return gzipSync(Buffer.concat(parts));
}
