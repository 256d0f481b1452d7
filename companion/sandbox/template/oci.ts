// `--from-image FILE`: a template's root filesystem from a container image made elsewhere, with no container daemon:
// an OCI image layout (a directory, or a tar of one) or a `docker save` / `podman save` archive. This module only
// reads the image's index, manifest and config (small JSON, zod-checked, digests verified) and finds each layer's
// bytes; the layers themselves are applied by the unpack jail (unpack.ts, unpack-jail.ts). Invariants:
// - The image is hostile input. Nothing of it is written by this process; a tar archive is indexed header by header
//   (node-tar's Header and Pax parsers) and layers are handed to the jail as byte ranges of the archive.
// - In a layout directory every file is opened without following symlinks, and every blob must match its digest;
//   a `docker save` archive's layers must match the config's diff_ids (checked on the unpacked streams).
// - The image config's Env and WorkingDir become the template's environment and working directory.
import { createHash } from 'node:crypto';
import { closeSync, constants, createReadStream, existsSync, fstatSync, lstatSync, mkdirSync, openSync, readSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Header, Pax } from 'tar';
import { z } from 'zod';
import { fatal } from '../../errors';
import type { RootfsContext, RootfsImage } from './rootfs';
import { unpackInJail } from './unpack-jail';
import { DEFAULT_UNPACK_LIMITS } from './unpack';

const IMAGE_RECIPE = 1;
const MAX_JSON_BYTES = 4 * 2 ** 20;
const MAX_LAYERS = 256;
const DIGEST = /^sha256:[0-9a-f]{64}$/;

const Descriptor = z.object({ mediaType: z.string().optional(), digest: z.string().regex(DIGEST), size: z.number().int().nonnegative().optional(),
  platform: z.object({ os: z.string(), architecture: z.string() }).passthrough().optional() }).passthrough();
const IndexSchema = z.object({ manifests: z.array(Descriptor).min(1).max(64) }).passthrough();
const ManifestSchema = z.object({ config: Descriptor, layers: z.array(Descriptor).max(MAX_LAYERS) }).passthrough();
const DockerManifestSchema = z.array(z.object({ Config: z.string().max(512), Layers: z.array(z.string().max(512)).max(MAX_LAYERS), RepoTags: z.array(z.string()).nullish() }).passthrough()).min(1);
const ConfigSchema = z.object({
  config: z.object({ Env: z.array(z.string()).nullish(), WorkingDir: z.string().nullish() }).passthrough().nullish(),
  rootfs: z.object({ diff_ids: z.array(z.string().regex(DIGEST)) }).passthrough().optional(),
}).passthrough();
const INDEX_TYPES = new Set(['application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.list.v2+json']);

/** Where a file of the image is: a whole file (layout directory) or a byte range of the archive. */
interface Blob { file: string; start: number; size: number }

interface ImageSource {
  describe: string;
  blob(name: string): Blob | null;
}

/** Indexes a tar archive's regular files by normalised name (nothing is extracted). */
export function indexTar(file: string): Map<string, Blob> {
  const out = new Map<string, Blob>();
  const fd = openSync(file, 'r');
  try {
    const size = fstatSync(fd).size;
    const block = Buffer.alloc(512);
    let pos = 0;
    let longName: string | null = null;
    let pax: Pax | null = null;
    while (pos + 512 <= size) {
      if (readSync(fd, block, 0, 512, pos) !== 512) break;
      const h = new Header(block);
      if (h.nullBlock) break;
      if (!h.cksumValid) throw fatal('image_invalid', `${file} is not a valid tar archive (bad header at byte ${pos})`);
      const bodySize = h.size ?? 0;
      const body = pos + 512;
      if (body + bodySize > size) throw fatal('image_invalid', `${file} ends inside an entry`);
      const readBody = () => {
        if (bodySize > MAX_JSON_BYTES) throw fatal('image_invalid', `${file}: an extended header is too big`);
        const b = Buffer.alloc(bodySize);
        readSync(fd, b, 0, bodySize, body);
        return b.toString('utf8');
      };
      if (h.type === 'NextFileHasLongPath' || h.type === 'OldGnuLongPath') longName = readBody().replace(/\0.*$/s, '');
      else if (h.type === 'ExtendedHeader') pax = Pax.parse(readBody(), {});
      else if (h.type !== 'GlobalExtendedHeader') {
        const name = (pax?.path ?? longName ?? h.path ?? '').replace(/^(\.\/)+/, '').replace(/^\/+/, '');
        const entrySize = pax?.size ?? bodySize;
        if ((h.type === 'File' || h.type === 'OldFile') && name) out.set(name, { file, start: body, size: entrySize });
        longName = null;
        pax = null;
      }
      pos = body + Math.ceil(bodySize / 512) * 512;
    }
  } finally { closeSync(fd); }
  return out;
}

/** A file of a layout directory, refused when it or a directory on the way (below the layout) is a symlink. */
function layoutFile(dir: string, rel: string): Blob | null {
  const parts = rel.split('/');
  if (parts.some((p) => p === '..' || p === '' || p === '.')) return null;
  let cur = dir;
  for (const [i, part] of parts.entries()) {
    cur = path.join(cur, part);
    let st;
    try { st = lstatSync(cur); } catch { return null; }
    if (st.isSymbolicLink()) throw fatal('image_invalid', `${rel} in ${dir} is reached through a symlink`);
    if (i === parts.length - 1) return st.isFile() ? { file: cur, start: 0, size: st.size } : null;
    if (!st.isDirectory()) return null;
  }
  return null;
}

function openImage(file: string): ImageSource {
  let st;
  try { st = statSync(file); } catch { throw fatal('image_missing', `${file} does not exist`); }
  if (st.isDirectory()) return { describe: `OCI layout ${file}`, blob: (name) => layoutFile(file, name) };
  const index = indexTar(file);
  return { describe: `${index.has('oci-layout') ? 'OCI layout archive' : 'image archive'} ${file}`, blob: (name) => index.get(name) ?? null };
}

function readBlob(b: Blob, max = MAX_JSON_BYTES): Buffer {
  if (b.size > max) throw fatal('image_invalid', `${b.file}: a metadata file of ${b.size} bytes (at most ${max})`);
  const fd = openSync(b.file, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const buf = Buffer.alloc(b.size);
    if (readSync(fd, buf, 0, b.size, b.start) !== b.size) throw fatal('image_invalid', `${b.file} is truncated`);
    return buf;
  } finally { closeSync(fd); }
}

function parseJson<T>(schema: z.ZodType<T>, buf: Buffer, what: string): T {
  let raw: unknown;
  try { raw = JSON.parse(buf.toString('utf8')); } catch { throw fatal('image_invalid', `${what} is not JSON`); }
  const r = schema.safeParse(raw);
  if (!r.success) throw fatal('image_invalid', `${what} is not what an image holds: ${r.error.issues.slice(0, 3).map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  return r.data;
}

const sha256Hex = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function sha256Range(b: Blob): Promise<string> {
  const h = createHash('sha256');
  const fd = openSync(b.file, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    if (b.size === 0) return h.digest('hex');
    await new Promise<void>((resolve, reject) => createReadStream('', { fd, start: b.start, end: b.start + b.size - 1, autoClose: false } as Parameters<typeof createReadStream>[1])
      .on('data', (d) => h.update(d)).on('end', resolve).on('error', reject));
  } finally { closeSync(fd); }
  return h.digest('hex');
}

function blobByDigest(src: ImageSource, digest: string): Blob {
  const b = src.blob(`blobs/sha256/${digest.slice(7)}`);
  if (!b) throw fatal('image_invalid', `${src.describe} has no blob ${digest}`);
  return b;
}

/** A blob that must match its digest (checked before it is used). */
async function verified(src: ImageSource, digest: string): Promise<Blob> {
  const b = blobByDigest(src, digest);
  if (`sha256:${await sha256Range(b)}` !== digest) throw fatal('image_invalid', `blob ${digest} of ${src.describe} does not match its digest`);
  return b;
}

export interface ResolvedImage {
  layers: Blob[];
  /** What the unpacked layers must hash to (the config's diff_ids), when the config names them. */
  diffIds: string[] | null;
  env: Record<string, string>;
  workdir?: string;
  /** sha256 over the config and the layers' digests: the image's identity. */
  identity: string;
  describe: string;
}

/** Reads an image's index, manifest and config, and finds its layers. */
export async function resolveImage(file: string): Promise<ResolvedImage> {
  const src = openImage(file);
  let configBuf: Buffer;
  let layers: Blob[];
  let layerDigests: string[];
  const layout = src.blob('index.json');
  if (layout && src.blob('oci-layout')) {
    let index = parseJson(IndexSchema, readBlob(layout), 'index.json');
    let manifestDesc: z.infer<typeof Descriptor> | undefined;
    for (let depth = 0; depth < 4 && !manifestDesc; depth++) {
      const pick = index.manifests.length === 1 ? index.manifests[0]
        : index.manifests.find((m) => m.platform?.os === 'linux' && m.platform.architecture === 'amd64');
      if (!pick) throw fatal('image_invalid', `${src.describe} has ${index.manifests.length} images and none for linux/amd64`);
      if (pick.mediaType && INDEX_TYPES.has(pick.mediaType)) index = parseJson(IndexSchema, readBlob(await verified(src, pick.digest)), `index ${pick.digest}`);
      else manifestDesc = pick;
    }
    if (!manifestDesc) throw fatal('image_invalid', `${src.describe}: image indexes nest too deep`);
    const manifest = parseJson(ManifestSchema, readBlob(await verified(src, manifestDesc.digest)), `manifest ${manifestDesc.digest}`);
    configBuf = readBlob(await verified(src, manifest.config.digest));
    layers = [];
    for (const l of manifest.layers) {
      if (l.mediaType && /zstd/.test(l.mediaType)) throw fatal('image_invalid', `layer ${l.digest} is zstd-compressed, which is not supported (gzip or uncompressed layers are)`);
      layers.push(await verified(src, l.digest));
    }
    layerDigests = manifest.layers.map((l) => l.digest);
  } else {
    const m = src.blob('manifest.json');
    if (!m) throw fatal('image_invalid', `${file} is neither an OCI image layout (oci-layout, index.json) nor a docker save archive (manifest.json)`);
    const entries = parseJson(DockerManifestSchema, readBlob(m), 'manifest.json');
    const entry = entries[0]!;
    const cfg = src.blob(entry.Config.replace(/^\.\//, ''));
    if (!cfg) throw fatal('image_invalid', `manifest.json names a config ${entry.Config} the archive does not hold`);
    configBuf = readBlob(cfg);
    layers = entry.Layers.map((name) => {
      const b = src.blob(name.replace(/^\.\//, ''));
      if (!b) throw fatal('image_invalid', `manifest.json names a layer ${name} the archive does not hold`);
      return b;
    });
    layerDigests = await Promise.all(layers.map(async (b) => `sha256:${await sha256Range(b)}`));
  }
  const config = parseJson(ConfigSchema, configBuf, 'the image config');
  const diffIds = config.rootfs?.diff_ids ?? null;
  if (diffIds && diffIds.length !== layers.length) throw fatal('image_invalid', `the image config names ${diffIds.length} layers, the manifest ${layers.length}`);
  const env: Record<string, string> = {};
  for (const kv of config.config?.Env ?? []) {
    const i = kv.indexOf('=');
    const k = i > 0 ? kv.slice(0, i) : '';
    if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(k) && !['BASH_ENV', 'ENV'].includes(k)) env[k] = kv.slice(i + 1);
  }
  const wd = config.config?.WorkingDir;
  return {
    layers, diffIds, env, ...(wd && wd.startsWith('/') && !wd.split('/').includes('..') ? { workdir: wd } : {}),
    identity: sha256Hex(Buffer.from(JSON.stringify({ config: sha256Hex(configBuf), layers: layerDigests }))),
    describe: `${src.describe} (${layers.length} layer${layers.length === 1 ? '' : 's'})`,
  };
}

/** The root filesystem image of a container image: from the cache, or unpacked in the jail. */
export async function imageRootfs(file: string, ctx: RootfsContext): Promise<RootfsImage> {
  const abs = path.resolve(file);
  ctx.progress(`rootfs: reading ${abs}`);
  const img = await resolveImage(abs);
  const key = createHash('sha256').update(JSON.stringify({ recipe: IMAGE_RECIPE, identity: img.identity })).digest('hex').slice(0, 24);
  const image = path.join(ctx.cache, 'rootfs-image', `oci-${key}`, 'rootfs.ext4');
  const result = { image, key: `oci-${key}`, source: `image ${img.describe}`, full: false, env: img.env, ...(img.workdir ? { workdir: img.workdir } : {}) };
  if (!ctx.force && existsSync(image)) { ctx.progress(`rootfs: cached image ${image}`); return { ...result, cached: true }; }
  ctx.progress(`rootfs: unpacking ${img.layers.length} layer(s) in the unpack jail`);
  const started = Date.now();
  mkdirSync(path.dirname(image), { recursive: true });
  const report = await unpackInJail({
    layers: img.layers.map((b) => ({ file: b.file, start: b.start, end: b.start + b.size - 1 })), limits: ctx.limits ?? DEFAULT_UNPACK_LIMITS,
    prepare: true, output: `${image}.new`, stageParent: path.dirname(path.dirname(image)), rootBuildUid: ctx.rootBuildUid,
  });
  if (img.diffIds && report.diffIds.some((d, i) => d !== img.diffIds![i])) {
    rmSync(`${image}.new`, { force: true });
    throw fatal('image_invalid', `the layers of ${img.describe} do not match the image config's diff_ids`);
  }
  if (report.droppedCount) ctx.progress(`rootfs: ${report.droppedCount} entr${report.droppedCount === 1 ? 'y' : 'ies'} left out: ${report.dropped.slice(0, 5).map((d) => `/${d.path} (${d.reason})`).join('; ')}`);
  writeFileSync(path.join(path.dirname(image), 'info.json'), JSON.stringify({ source: result.source, report, builtAt: new Date().toISOString() }, null, 2));
  renameSync(`${image}.new`, image);
  ctx.progress(`rootfs: ${report.entries} entries, ${Math.round(report.bytes / 2 ** 20)} MiB of files, in ${Math.round((Date.now() - started) / 1000)} s`);
  return { ...result, cached: false };
}
