// Named templates, side by side: <home>/templates/names/<name> holds the hash of the template built under that name
// (templates themselves stay content-addressed in <home>/templates/<hash>/, see manifest.ts); `current` names the
// environment's default. Invariants:
// - A name file is replaced atomically (write + rename); a template directory is deleted only when no name and not
//   `current` refer to it, and `current` only with `force`.
// - References resolve the same way everywhere: a path (it has a "/") is a template directory, anything else is a
//   name, then a hash (or an unambiguous hash prefix of at least 8 characters).
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fatal } from '../../errors';
import { loadTemplate, templatesDir, type Template, type TemplateManifest } from './manifest';
import { TEMPLATE_NAME } from './spec';

const HASH = /^[0-9a-f]{16,64}$/;

export function namesDir(home: string): string { return path.join(templatesDir(home), 'names'); }

/** The default template's hash (`current`), or null. */
export function currentHash(home: string): string | null {
  try {
    const h = readFileSync(path.join(templatesDir(home), 'current'), 'utf8').trim();
    return HASH.test(h) ? h : null;
  } catch { return null; }
}

export function setCurrent(home: string, hash: string): void {
  const file = path.join(templatesDir(home), 'current');
  writeFileSync(`${file}.tmp-${process.pid}`, hash);
  renameSync(`${file}.tmp-${process.pid}`, file);
}

/** name → hash of every named template. */
export function templateNames(home: string): Map<string, string> {
  const out = new Map<string, string>();
  let names: string[] = [];
  try { names = readdirSync(namesDir(home)); } catch { return out; }
  for (const name of names.sort()) {
    if (!TEMPLATE_NAME.test(name)) continue;
    try {
      const h = readFileSync(path.join(namesDir(home), name), 'utf8').trim();
      if (HASH.test(h)) out.set(name, h);
    } catch { /* removed meanwhile */ }
  }
  return out;
}

export function nameTemplate(home: string, name: string, hash: string): void {
  if (!TEMPLATE_NAME.test(name)) throw fatal('template_name_invalid', `"${name}" is not a template name (lowercase letters, digits, ".", "_", "-")`);
  mkdirSync(namesDir(home), { recursive: true });
  const file = path.join(namesDir(home), name);
  writeFileSync(`${file}.tmp-${process.pid}`, hash);
  renameSync(`${file}.tmp-${process.pid}`, file);
}

/** The hash a reference (name, hash or hash prefix) stands for, or null. */
export function resolveHash(home: string, ref: string): string | null {
  const named = templateNames(home).get(ref);
  if (named) return named;
  if (!/^[0-9a-f]{8,64}$/.test(ref)) return null;
  const dirs = builtHashes(home).filter((h) => h.startsWith(ref));
  if (dirs.length > 1) throw fatal('template_ambiguous', `"${ref}" is the start of ${dirs.length} template hashes: give more of it`);
  return dirs[0] ?? null;
}

function builtHashes(home: string): string[] {
  try {
    return readdirSync(templatesDir(home)).filter((d) => HASH.test(d) && existsSync(path.join(templatesDir(home), d, 'template.json')));
  } catch { return []; }
}

/** The template a reference names; null when nothing by that name or hash is built here. */
export function findNamedTemplate(home: string, ref: string): Template | null {
  if (ref.includes('/')) return loadTemplate(path.resolve(ref));
  const hash = resolveHash(home, ref);
  return hash ? loadTemplate(path.join(templatesDir(home), hash)) : null;
}

export interface TemplateEntry {
  hash: string;
  dir: string;
  names: string[];
  /** The environment's default (`current`). */
  current: boolean;
  manifest: TemplateManifest | null;
  /** Why the manifest could not be read (a damaged template). */
  problem?: string;
  /** Disk space the template's files take (allocated blocks: images are sparse). */
  diskBytes: number;
}

function allocatedBytes(dir: string): number {
  let total = 0;
  for (const f of readdirSync(dir)) {
    try { total += statSync(path.join(dir, f)).blocks * 512; } catch { /* removed meanwhile */ }
  }
  return total;
}

/** Every built template, named ones first (by name), then the rest by build time, newest first. */
export function listTemplates(home: string): TemplateEntry[] {
  const names = templateNames(home);
  const current = currentHash(home);
  const entries = builtHashes(home).map((hash): TemplateEntry => {
    const dir = path.join(templatesDir(home), hash);
    const base = { hash, dir, names: [...names].filter(([, h]) => h === hash).map(([n]) => n), current: hash === current, diskBytes: allocatedBytes(dir) };
    try { return { ...base, manifest: loadTemplate(dir).manifest }; } catch (err) { return { ...base, manifest: null, problem: (err as Error).message }; }
  });
  const key = (e: TemplateEntry) => (e.names.length ? `0${e.names[0]}` : `1${String(9e15 - Date.parse(e.manifest?.createdAt ?? '0'))}`);
  return entries.sort((a, b) => key(a).localeCompare(key(b)));
}

export interface Removal { names: string[]; deleted: string | null; kept?: string }

/**
 * Removes a name (and its template directory when nothing else refers to it), or a template by hash (every name of
 * it too). The default template (`current`) goes only with `force`.
 */
export function removeTemplate(home: string, ref: string, opts: { force?: boolean } = {}): Removal {
  const names = templateNames(home);
  const byName = names.get(ref);
  const hash = byName ?? resolveHash(home, ref);
  if (!hash) throw fatal('template_unknown', `no template "${ref}" here (perimeter template ls)`);
  const dropNames = byName ? [ref] : [...names].filter(([, h]) => h === hash).map(([n]) => n);
  const stillNamed = [...names].some(([n, h]) => h === hash && !dropNames.includes(n));
  const isCurrent = currentHash(home) === hash;
  if (isCurrent && !stillNamed && !opts.force) {
    throw fatal('template_in_use', `template ${byName ? `"${ref}" (${hash})` : hash} is the default template: remove it with --force, or make another the default first`);
  }
  for (const n of dropNames) unlinkSync(path.join(namesDir(home), n));
  if (stillNamed) return { names: dropNames, deleted: null, kept: `${hash} is still named ${[...names].filter(([n, h]) => h === hash && !dropNames.includes(n)).map(([n]) => n).join(', ')}` };
  if (isCurrent) unlinkSync(path.join(templatesDir(home), 'current'));
  const dir = path.join(templatesDir(home), hash);
  const trash = path.join(templatesDir(home), `.removed-${hash}-${process.pid}`);
  renameSync(dir, trash);   // gone from view at once; clones still running keep their mapped memory file
  rmSync(trash, { recursive: true, force: true });
  return { names: dropNames, deleted: hash };
}
