// What Build Template from File sends to an SSH host: the template file, checked with the companion's own schema
// (companion/protocol/template.ts) before anything is sent, and the files its `files` entries copy in, packed as one
// tar archive for ssh.ts's `templateBuildFile` script, which unpacks it into a private directory there and builds it
// exactly as `perimeter template build -f` would on that host. Plain Node, no `vscode`. Invariants:
// - Only what lies inside the template file's directory (after resolving symlinks) is sent, as the CLI requires.
// - Only regular files and directories are sent: a symlink or special file inside a copied directory is refused,
//   naming it (the remote copy would differ from a local build).
// - Member names are the `from` paths relative to the template file's directory: at most 100 bytes (ustar), no
//   control characters, no "..". The archive is at most TEMPLATE_UPLOAD_MAX_BYTES with at most MAX_UPLOAD_MEMBERS
//   members; a template over either limit is refused with the size it has, before any connection is made.
import { lstatSync, readdirSync, readFileSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { parseTemplateSpecText } from '../../companion/protocol/template';
import { packTar, type BundleFile } from '../launcher/bundle';
import { TEMPLATE_UPLOAD_MAX_BYTES } from '../launcher/ssh';

export const MAX_UPLOAD_MEMBERS = 10_000;
/** The template file names the remote script accepts (and the CLI reads as JSON or YAML). */
export const UPLOAD_FILE_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]*\.(json|ya?ml)$/;

export class TemplateUploadError extends Error {
  constructor(message: string) { super(message); this.name = 'TemplateUploadError'; }
}

export interface TemplateUpload {
  /** The template file's name in the archive (at its root). */
  fileName: string;
  archive: Buffer;
  /** Files and directories sent besides the template file. */
  members: number;
}

// eslint-disable-next-line no-control-regex -- control characters are what is refused here
const CONTROL = /[\u0000-\u001f\u007f]/;

/** Reads, checks and packs a template file and the files it copies in; throws TemplateUploadError saying what is refused. */
export function packTemplateUpload(file: string, maxBytes = TEMPLATE_UPLOAD_MAX_BYTES): TemplateUpload {
  const fileName = path.basename(file);
  if (!UPLOAD_FILE_NAME.test(fileName)) {
    throw new TemplateUploadError(`${fileName}: a template file sent to an SSH host must be named with letters, digits, ".", "_" or "-" and end in .json, .yaml or .yml`);
  }
  let text: string;
  try { text = readFileSync(file, 'utf8'); } catch (err) { throw new TemplateUploadError(`cannot read ${fileName}: ${(err as Error).message}`); }
  let spec;
  try { spec = parseTemplateSpecText(text, fileName); } catch (err) { throw new TemplateUploadError((err as Error).message); }
  const dir = realpathSync(path.dirname(path.resolve(file)));
  const members = new Map<string, BundleFile>();
  let bytes = 1024;   // the archive's end
  const add = (name: string, member: Omit<BundleFile, 'name'>) => {
    if (members.has(name)) return;
    if (Buffer.byteLength(name) > 100 || CONTROL.test(name) || name.split('/').includes('..')) {
      throw new TemplateUploadError(`files: "${name}" cannot be sent to an SSH host (names up to 100 bytes, no control characters); shorten it or build the template on that host`);
    }
    if (members.size + 1 >= MAX_UPLOAD_MEMBERS) throw new TemplateUploadError(`files: more than ${MAX_UPLOAD_MEMBERS} files and directories to copy in; an SSH host is sent at most that many`);
    bytes += 512 + Math.ceil(member.data.length / 512) * 512;
    if (bytes > maxBytes) throw new TemplateUploadError(`files: the files to copy in exceed ${maxBytes / 2 ** 20} MiB, the most sent to an SSH host; build this template on that host instead`);
    members.set(name, { name, ...member });
  };
  const addTree = (real: string, name: string) => {
    const st = lstatSync(real);
    if (st.isFile()) add(name, { data: readFileSync(real), mode: st.mode & 0o7777 });
    else if (st.isDirectory()) {
      if (name) add(`${name}/`, { data: Buffer.alloc(0), mode: st.mode & 0o7777, directory: true });
      for (const entry of readdirSync(real).sort()) addTree(path.join(real, entry), name ? `${name}/${entry}` : entry);
    } else {
      throw new TemplateUploadError(`files: ${name} is ${st.isSymbolicLink() ? 'a symbolic link' : 'not a regular file or directory'}; only regular files and directories are sent to an SSH host`);
    }
  };
  add(fileName, { data: Buffer.from(text), mode: 0o644 });
  for (const f of spec.files) {
    const full = path.resolve(dir, f.from);
    let real: string;
    try { real = realpathSync(full); } catch { throw new TemplateUploadError(`files: ${f.from} does not exist (relative to ${fileName})`); }
    if (real !== dir && !real.startsWith(`${dir}${path.sep}`)) throw new TemplateUploadError(`files: ${f.from} is outside the template file's directory`);
    const name = path.relative(dir, full).split(path.sep).join('/');
    if (name.startsWith('..')) throw new TemplateUploadError(`files: ${f.from} is outside the template file's directory`);
    addTree(real, name);
  }
  return { fileName, archive: packTar([...members.values()]), members: members.size - 1 };
}
