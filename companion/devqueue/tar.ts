// The dev queue's generated skill archives: a gzip-compressed tar (node-tar's in-memory packer) of regular files
// and the directories above them. Invariants: member names are relative `/`-separated paths with no `..` segment
// (anything else is refused before packing); parents come before their children; owners are left out (portable),
// `.sh` and `.py` files are executable, everything else is 0644 and directories 0755.
import { Header, PackSync, ReadEntry } from 'tar';

function member(path: string, type: 'File' | 'Directory', mode: number, data: Buffer, mtime: Date): ReadEntry {
  const header = new Header({ path, type, mode, size: data.length, mtime });
  header.encode();
  const entry = new ReadEntry(header);
  entry.end(data);
  return entry;
}

/** Builds a .tar.gz from `files` (relative path -> content); parent directories are added automatically. */
export function tarGz(files: Record<string, string | Buffer>, mtime = Date.now()): Buffer {
  const when = new Date(mtime);
  const pack = new PackSync({ gzip: true, portable: true });
  const out: Buffer[] = [];
  pack.on('data', (chunk: Buffer) => out.push(chunk));
  const dirs = new Set<string>();
  for (const name of Object.keys(files).sort()) {
    if (name.startsWith('/') || name.split('/').includes('..')) throw new Error(`tar: unsafe name ${name}`);
    const segs = name.split('/');
    for (let i = 1; i < segs.length; i++) {
      const dir = `${segs.slice(0, i).join('/')}/`;
      if (!dirs.has(dir)) { dirs.add(dir); pack.add(member(dir, 'Directory', 0o755, Buffer.alloc(0), when)); }
    }
    const content = files[name]!;
    const data = Buffer.isBuffer(content) ? content : Buffer.from(content, 'utf8');
    pack.add(member(name, 'File', /\.(sh|py)$/.test(name) ? 0o755 : 0o644, data, when));
  }
  pack.end();
  return Buffer.concat(out);
}
