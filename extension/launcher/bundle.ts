// The companion bundle the extension installs on a remote host: dist/perimeter.js plus dist/guest/** (the guest
// agent and template inputs), and a VERSION line `<package version> <sha256 of the files>` so an older or different
// remote copy is detected and replaced. Packed as a POSIX ustar archive in memory (no dependency, no temp files) and
// streamed to `tar -x` on the remote host over the SSH connection's stdin. Plain Node, no `vscode`.
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync, existsSync } from 'node:fs';
import path from 'node:path';

/** An archive member: a regular file, or (`directory`, with empty `data`) a directory entry. */
export interface BundleFile { name: string; data: Buffer; mode: number; directory?: boolean }
export interface CompanionBundle { version: string; files: BundleFile[] }

/** Reads the bundle from an extension folder (where `dist/` holds the build output). */
export function readCompanionBundle(extensionDir: string, packageVersion: string): CompanionBundle {
  const dist = path.join(extensionDir, 'dist');
  const main = path.join(dist, 'perimeter.js');
  if (!existsSync(main)) throw new Error(`the companion bundle is missing: ${main} (run npm run build)`);
  const files: BundleFile[] = [{ name: 'perimeter.js', data: readFileSync(main), mode: 0o755 }];
  const walk = (dir: string, rel: string) => {
    if (!existsSync(dir)) return;
    for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const abs = path.join(dir, entry.name); const name = `${rel}/${entry.name}`;
      if (entry.isDirectory()) walk(abs, name);
      else if (entry.isFile()) files.push({ name, data: readFileSync(abs), mode: statSync(abs).mode & 0o777 });
    }
  };
  walk(path.join(dist, 'guest'), 'guest');
  const hash = createHash('sha256');
  for (const f of files) hash.update(f.name).update('\0').update(f.data);
  const version = `${packageVersion} ${hash.digest('hex').slice(0, 16)}`;
  files.push({ name: 'VERSION', data: Buffer.from(version + '\n'), mode: 0o644 });
  return { version, files };
}

/** True when the remote VERSION line differs from ours (missing, older, or another build). */
export function needsInstall(remoteVersionLine: string, bundle: CompanionBundle): boolean {
  return remoteVersionLine.trim() !== bundle.version;
}

/** A ustar archive of the files (directories are implied by the member names, which GNU and BSD tar accept, or given
 *  as directory entries where their mode or emptiness matters). */
export function packTar(files: BundleFile[], mtime = Math.floor(Date.now() / 1000)): Buffer {
  const blocks: Buffer[] = [];
  for (const f of files) {
    if (Buffer.byteLength(f.name) > 100 || f.name.startsWith('/') || f.name.split('/').includes('..')) throw new Error(`bad archive member name ${f.name}`);
    const h = Buffer.alloc(512);
    h.write(f.name, 0, 100, 'utf8');
    h.write(octal(f.mode, 8), 100);
    h.write(octal(0, 8), 108); h.write(octal(0, 8), 116);
    h.write(octal(f.data.length, 12), 124);
    h.write(octal(mtime, 12), 136);
    h.fill(' ', 148, 156);
    h.write(f.directory ? '5' : '0', 156);
    h.write('ustar\u000000', 257, 'binary');
    let sum = 0;
    for (const b of h) sum += b;
    h.write(octal(sum, 8), 148);
    blocks.push(h, f.data, Buffer.alloc((512 - (f.data.length % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  return Buffer.concat(blocks);
}

function octal(n: number, width: number): string {
  return n.toString(8).padStart(width - 1, '0') + '\0';
}
