// `perimeter persist add|rm|ls --session ID [--home DIR] [--json] [PATTERN...]`: view and change a session's persist
// list (guest paths, directories or globs such as /workspace/** ) and see what its latest generation holds (a session
// disk's files are listed through a short-lived VM: the running companion's, else one this command starts; every name
// is shown escaped on one line);
// `perimeter persist cat --session ID [--generation N] PATH` writes a persisted file to stdout;
// `perimeter persist export --session ID [--generation N] --to DIR [--overwrite] [PATH...]` copies a generation's
// files (or those under each PATH) into DIR under the safe-copy rules (protocol/safe-export.ts), a file at a time in
// PERSIST_READ_MAX slices, never a whole file in memory;
// `perimeter persist rollback --session ID --to N` makes a kept generation's content current again; `perimeter persist
// gc` deletes now the session disks of sessions that ended persist.retainDays (or --retain-days) ago (a running
// companion first asks the service which sessions were archived or terminated; without one, the ends it recorded
// count). When a
// companion runs on this state directory, the change goes through its control API (so connected clients see the
// `persist.changed` event); otherwise the state directory is changed directly. Either way the list applies from the
// next tool call on, and every pattern is validated (companion/persist/paths.ts) before anything is written. A session
// the state directory does not know (persist/known-session.ts) is an error for ls and rm; add prepares its list.
import { readFileSync, promises as fsp } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import WebSocket from 'ws';
import type { z } from 'zod';
import { ControlResults, PERSIST_READ_MAX, ServerMessage, type ControlMethod, type PersistEntry } from '../protocol/control';
import { statePaths } from '../config';
import { PerimeterError, fatal } from '../errors';
import { Persistence, ALWAYS_PERSISTED } from '../persist/persistence';
import { DiskPersistence } from '../persist/disk/persistence';
import { DiskStore } from '../persist/disk/store';
import { collectDisks } from '../persist/disk/retention';
import { SESSION_UNKNOWN, sessionKnownOnDisk, unknownSession } from '../persist/known-session';
import type { PersistHistory } from '../persist/types';
import type { Config } from '../config';
import { formatBytes } from '../protocol/format';
import type { PersistState } from '../protocol/control';
import { checkGuestPath, showPath } from '../persist/paths';
import { ExportRefused, planExport, writeExported, type ExportPlan } from '../protocol/safe-export';
import { EventHub } from '../events';
import { selectDriver } from '../sandbox/select';
import { CONFIG_FLAGS, UsageError, configFromFlags } from './options';
import type { Command } from './types';

/** Entries `persist ls` shows of a session disk's generation. */
const LS_ENTRIES = 1000;
/** How long `persist ls` waits for the running companion's browse VM. */
const BROWSE_TIMEOUT_MS = 300_000;

const USAGE = [
  'usage: perimeter persist ls  --session ID [--json] [--home DIR]',
  '       perimeter persist add --session ID PATTERN... [--json] [--home DIR]',
  '       perimeter persist rm  --session ID PATTERN... [--json] [--home DIR]',
  '       perimeter persist rollback --session ID --to N [--json] [--home DIR]',
  '       perimeter persist cat --session ID [--generation N] PATH [--home DIR]',
  '       perimeter persist export --session ID [--generation N] --to DIR [--overwrite] [PATH...] [--json] [--home DIR]',
  '       perimeter persist gc [--retain-days N] [--json] [--home DIR]',
  '',
  'PATTERN is an absolute guest path: a directory (/workspace), a file, or a glob (/home/agent/.cache/pip/**,',
  `/workspace/**/*.py). ${ALWAYS_PERSISTED.join(' and ')} are always carried.`,
  'export copies the regular files of a generation (default: the latest), or those under each guest PATH, into DIR',
  '(created if absent) at their path below the PATH\'s parent (without PATH: /workspace/a.txt goes to DIR/workspace/a.txt).',
  'Never written: symlinks (persisted ones, or one met in DIR), names that are not plain (control characters, ., ..,',
  'over 255 bytes), a destination that is not a regular file, an existing file unless --overwrite. Each is reported;',
  'the exit status is 1 when DIR refused a file or the generation holds more entries than one listing (50 000).',
].join('\n');

type CliMethod = Extract<ControlMethod, 'getPersist' | 'setPersist' | 'rollbackPersist' | 'listPersistFiles' | 'readPersistFile' | 'collectDisks'>;
type CliResult<M extends CliMethod> = z.infer<(typeof ControlResults)[M]>;

/** One request to the companion running on `home`, or null when none is reachable (no control.json, dead pid,
 *  connection refused). A companion that answers with an error makes the command fail with that message. */
async function viaControlApi<M extends CliMethod>(home: string, method: M, params: Record<string, unknown>, timeoutMs = 5000): Promise<CliResult<M> | null> {
  let endpoint: { port: number; token: string; pid: number };
  try { endpoint = JSON.parse(readFileSync(statePaths(home).controlFile, 'utf8')) as typeof endpoint; } catch { return null; }
  if (!Number.isInteger(endpoint.port) || typeof endpoint.token !== 'string') return null;
  try { process.kill(endpoint.pid, 0); } catch { return null; }
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${endpoint.port}/`, { headers: { Authorization: `Bearer ${endpoint.token}` }, handshakeTimeout: 3000 });
    const timer = setTimeout(() => { ws.terminate(); resolve(null); }, timeoutMs);
    const done = (fn: () => void) => { clearTimeout(timer); ws.close(); fn(); };
    ws.on('error', () => done(() => resolve(null)));
    ws.on('close', () => done(() => resolve(null)));
    ws.on('message', (data) => {
      let msg: ServerMessage;
      try { msg = ServerMessage.parse(JSON.parse(data.toString())); } catch { return; }
      if (msg.type === 'hello') ws.send(JSON.stringify({ id: 1, method, params }));
      else if (msg.type === 'response' && msg.id === 1) {
        const parsed = (ControlResults[method] as unknown as z.ZodType<CliResult<M>>).safeParse(msg.result);
        done(() => (parsed.success ? resolve(parsed.data) : reject(fatal('control_bad_reply', `the companion sent an invalid ${method} reply`))));
      } else if (msg.type === 'error' && (msg.id === 1 || msg.id === null)) {
        done(() => (msg.code === 'unavailable' ? resolve(null) : reject(fatal(`control_${msg.code}`, msg.message))));
      }
    });
  });
}

/** The session's disk persistence when it has a session disk (its state names the disk's generation), else null. */
async function localDisks(config: Config, sessionId: string): Promise<DiskPersistence | null> {
  if (!await DiskStore.peek(config.home, sessionId)) return null;
  return new DiskPersistence({ home: config.home, persist: config.persist, files: new Persistence({ home: config.home, persist: config.persist }), mode: config.sandbox.mode });
}

/** Through the running companion when there is one (it waits for a running call and drops what it prepared), else
 *  in the state directory: the session's disk when it has one, else the file store. */
async function rollback(config: Config, sessionId: string, to: number): Promise<PersistState> {
  const live = await viaControlApi(config.home, 'rollbackPersist', { sessionId, generation: to });
  if (live) return live;
  const files = new Persistence({ home: config.home, persist: config.persist });
  if (!await DiskStore.peek(config.home, sessionId)) return files.rollback(sessionId, to);
  return new DiskPersistence({ home: config.home, persist: config.persist, files, mode: config.sandbox.mode }).rollback(sessionId, to);
}

function render(state: PersistState): string {
  const count = state.fileCount ?? state.files.length;
  const lines = [
    `session ${state.sessionId}: generation ${state.generation}, ${count} file(s), ${formatBytes(state.totalBytes)}`,
    'persisted paths:',
    ...state.patterns.map((p) => `  ${p}`),
    `  (always: ${ALWAYS_PERSISTED.join(', ')})`,
  ];
  if (state.files.length > 0) {
    lines.push('files:');
    for (const f of state.files) lines.push(`  ${f.mode.toString(8).padStart(4, '0')} ${String(f.size).padStart(10)}  ${shownName(f.path)}`);
    if (count > state.files.length) lines.push(`  … and ${count - state.files.length} more`);
  }
  return lines.join('\n');
}

/** A guest name on one line of a listing: escaped (newlines, escape sequences, C1 and direction characters), whole. */
function shownName(p: string): string { return showPath(p, { full: true }).slice(1, -1); }

/** A disk generation's entries (the first page of a listing) under `render`'s header. */
export function renderDiskFiles(page: { items: PersistEntry[]; nextCursor: string | null }): string {
  const lines = ['files:'];
  for (const e of page.items) {
    const name = e.type === 'dir' ? `${shownName(e.path)}/` : e.type === 'symlink' ? `${shownName(e.path)} -> ${shownName(e.target ?? '')}` : shownName(e.path);
    lines.push(`  ${e.mode.toString(8).padStart(4, '0')} ${String(e.size).padStart(10)}  ${name}`);
  }
  if (page.nextCursor !== null) lines.push(`  … and more (the first ${page.items.length} entries are shown)`);
  return lines.join('\n');
}

/** The first LS_ENTRIES entries of a disk session's generation: through the running companion, else through a
 *  browse VM this command starts (the host never reads the disk itself). */
async function diskEntries(config: Config, sessionId: string, generation: number): Promise<{ items: PersistEntry[]; nextCursor: string | null }> {
  const params = { sessionId, generation, limit: LS_ENTRIES };
  const live = await viaControlApi(config.home, 'listPersistFiles', params, BROWSE_TIMEOUT_MS);
  if (live) return live;
  return withBrowseVms(config, (disks) => disks.entries(sessionId, generation, { limit: LS_ENTRIES, cursor: null }));
}

/** `fn` with disk persistence that starts its browse VMs here (no pool, no network); all stopped afterwards. */
async function withBrowseVms<T>(config: Config, fn: (disks: DiskPersistence) => Promise<T>): Promise<T> {
  const { driver } = await selectDriver({ ...config, sandbox: { ...config.sandbox, poolSize: 0 } }, new EventHub());
  const disks = new DiskPersistence({
    home: config.home, persist: config.persist, files: new Persistence({ home: config.home, persist: config.persist }), mode: config.sandbox.mode,
    browse: () => driver.acquire({ sessionId: 'perimeter-browse' }),
  });
  try { return await fn(disks); } finally {
    await disks.close();
    await driver.close();
  }
}

/** One generation of a session, read a page or a slice at a time. */
interface GenerationReader {
  readonly generation: number;
  entries(page: { limit: number; cursor: string | null }): Promise<{ items: PersistEntry[]; nextCursor: string | null; truncated?: boolean }>;
  /** At most PERSIST_READ_MAX bytes of `file` from `offset`, and the file's size. */
  read(file: string, offset: number): Promise<{ size: number; data: Buffer }>;
}

/** `fn` with generation `generation` (default: the latest) of the session: through the running companion, else from
 *  the state directory (a session disk through a browse VM started here, else the file store). */
async function withGeneration<T>(config: Config, sessionId: string, generation: number | undefined, fn: (g: GenerationReader) => Promise<T>): Promise<T> {
  const live = await viaControlApi(config.home, 'getPersist', { sessionId });
  if (live) {
    const gen = generation ?? live.generation;
    const ask = async <M extends CliMethod>(method: M, params: Record<string, unknown>): Promise<CliResult<M>> => {
      const r = await viaControlApi(config.home, method, params, BROWSE_TIMEOUT_MS);
      if (!r) throw fatal('control_gone', 'the companion stopped answering');
      return r;
    };
    return fn({
      generation: gen,
      entries: async (page) => { const r = await ask('listPersistFiles', { sessionId, generation: gen, ...page }); return { items: r.items, nextCursor: r.nextCursor, truncated: r.truncated }; },
      read: async (file, offset) => {
        const r = await ask('readPersistFile', { sessionId, generation: gen, path: file, offset, length: PERSIST_READ_MAX });
        return { size: r.size, data: Buffer.from(r.data, 'base64') };
      },
    });
  }
  if (!await sessionKnownOnDisk(config.home, sessionId)) throw unknownSession(sessionId);
  const local = (history: Pick<PersistHistory, 'entries' | 'readFile'>, gen: number): GenerationReader => ({
    generation: gen,
    entries: (page) => history.entries(sessionId, gen, page),
    read: (file, offset) => history.readFile(sessionId, gen, file, offset, PERSIST_READ_MAX),
  });
  const disk = await DiskStore.peek(config.home, sessionId);
  if (disk) return withBrowseVms(config, (disks) => fn(local(disks, generation ?? disk.generation)));
  const files = new Persistence({ home: config.home, persist: config.persist });
  return fn(local(files, generation ?? (await files.state(sessionId)).generation));
}

/** A file's bytes in order, PERSIST_READ_MAX at a time; `size` (what the listing said): a file that answers with
 *  another size, more bytes or fewer, fails. */
async function* fileChunks(g: GenerationReader, file: string, size: number | null): AsyncGenerator<Buffer> {
  for (let offset = 0; ;) {
    const r = await g.read(file, offset);
    if (size !== null && r.size !== size) throw fatal('persist_export_size', `${showPath(file)} is listed with ${size} bytes but read with ${r.size}`);
    if (r.data.length > 0) yield r.data;
    offset += r.data.length;
    if (offset > r.size) throw fatal('persist_export_size', `${showPath(file)} gave more bytes than its size`);
    if (offset === r.size) return;
    if (r.data.length === 0) throw fatal('persist_export_size', `${showPath(file)} ended after ${offset} of its ${r.size} bytes`);
  }
}

/** Writes one persisted file of a generation (default: the latest) to stdout. */
async function cat(config: Config, sessionId: string, file: string, generation: number | undefined): Promise<void> {
  const out = (data: Buffer) => new Promise<void>((resolve, reject) => { process.stdout.write(data, (err) => (err ? reject(err) : resolve())); });
  await withGeneration(config, sessionId, generation, async (g) => { for await (const chunk of fileChunks(g, file, null)) await out(chunk); });
}

export interface ExportReport {
  generation: number;
  /** Files written, relative to the target directory. */
  written: string[];
  /** Persisted entries not exported (symlinks, names that are not plain), with why. */
  skipped: ExportPlan['skipped'];
  /** Files the target directory refused (a symlink or non-file there, an existing file without --overwrite). */
  refused: string[];
  /** The generation holds more entries than its listing: files beyond it were not exported. */
  truncated: boolean;
}

/** Exports the regular files of a generation under `roots` into `to` (created when absent; it must be a real
 *  directory, not a symlink). */
async function exportFiles(config: Config, sessionId: string, generation: number | undefined, to: string, roots: string[], overwrite: boolean): Promise<ExportReport> {
  try { await fsp.mkdir(to, { mode: 0o755 }); } catch (err) { if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err; }
  const st = await fsp.lstat(to);
  if (!st.isDirectory()) throw fatal('persist_export_target', `${to} is not a directory${st.isSymbolicLink() ? ' (a symlink: not followed)' : ''}`);
  return withGeneration(config, sessionId, generation, async (g) => {
    const entries: PersistEntry[] = [];
    let truncated = false;
    for (let cursor: string | null = null; ;) {
      const page: { items: PersistEntry[]; nextCursor: string | null; truncated?: boolean } = await g.entries({ limit: LS_ENTRIES, cursor });
      entries.push(...page.items);
      truncated ||= page.truncated === true;
      if ((cursor = page.nextCursor) === null) break;
    }
    const report: ExportReport = { generation: g.generation, written: [], skipped: [], refused: [], truncated };
    for (const root of roots) {
      const plan = planExport(entries, root);
      report.skipped.push(...plan.skipped);
      for (const f of plan.files) {
        try {
          await writeExported(to, f.relative, fileChunks(g, f.guestPath, f.size), overwrite);
          report.written.push(f.relative);
        } catch (err) {
          if (!(err instanceof ExportRefused)) throw err;
          report.refused.push(err.message);
        }
      }
    }
    return report;
  });
}

export const persistCommand: Command = {
  name: 'persist',
  summary: 'show or change which guest paths a session carries from call to call',
  async run(argv) {
    let parsed;
    try {
      parsed = parseArgs({ args: argv, options: { ...CONFIG_FLAGS, session: { type: 'string' }, json: { type: 'boolean' }, to: { type: 'string' }, 'retain-days': { type: 'string' }, generation: { type: 'string' }, overwrite: { type: 'boolean' } }, strict: true, allowPositionals: true });
    } catch (err) { throw new UsageError((err as Error).message); }
    const { values, positionals } = parsed;
    if (values.help) { process.stdout.write(`${USAGE}\n`); return 0; }
    const [action, ...patterns] = positionals;
    if (action !== 'ls' && action !== 'add' && action !== 'rm' && action !== 'rollback' && action !== 'gc' && action !== 'cat' && action !== 'export') throw new UsageError('expected one of: ls, cat, export, add, rm, rollback, gc');
    if (action === 'gc') {
      const days = values['retain-days'];
      if (patterns.length > 0 || values.session || (days !== undefined && !/^\d{1,6}$/.test(days))) throw new UsageError('gc takes no session or patterns, and --retain-days N (whole days)');
      const config = configFromFlags(values, { control: { enabled: false } });
      const report = await viaControlApi(config.home, 'collectDisks', days === undefined ? {} : { retainDays: Number(days) }, BROWSE_TIMEOUT_MS)
        ?? await collectDisks(config.home, { retainDays: days === undefined ? config.persist.retainDays : Number(days) });
      process.stdout.write(values.json ? `${JSON.stringify(report)}\n`
        : `${report.removed.map((id) => `deleted the session disk of ${id}\n`).join('')}${report.removed.length} session disk(s) deleted, ${report.retained.length} of ended sessions kept until their retention passes\n`);
      return 0;
    }
    if (!values.session) throw new UsageError('--session ID is required');
    if (action === 'rollback') {
      if (patterns.length > 0 || !values.to || !/^\d{1,15}$/.test(values.to)) throw new UsageError('rollback takes --to N (a kept generation) and no patterns');
      const config = configFromFlags(values, { control: { enabled: false } });
      const state = await rollback(config, values.session, Number(values.to));
      process.stdout.write(`${values.json ? JSON.stringify(state) : `rolled back: generation ${state.generation} has the content of generation ${values.to}\n${render(state)}`}\n`);
      return 0;
    }
    if (action === 'cat') {
      const gen = values.generation;
      if (patterns.length !== 1 || !patterns[0]!.startsWith('/') || (gen !== undefined && !/^\d{1,15}$/.test(gen))) throw new UsageError('cat takes one absolute guest PATH and optionally --generation N');
      await cat(configFromFlags(values, { control: { enabled: false } }), values.session, patterns[0]!, gen === undefined ? undefined : Number(gen));
      return 0;
    }
    if (action === 'export') {
      const gen = values.generation;
      if (!values.to || (gen !== undefined && !/^\d{1,15}$/.test(gen))) throw new UsageError('export takes --to DIR, optionally --generation N and guest PATHs');
      const roots = patterns.length === 0 ? ['/'] : patterns.map((p) => (p.length > 1 && p.endsWith('/') ? p.slice(0, -1) : p));
      for (const r of roots) {
        const bad = r === '/' ? null : checkGuestPath(r);
        if (bad) throw new UsageError(`guest path ${showPath(r)}: ${bad}`);
      }
      const config = configFromFlags(values, { control: { enabled: false } });
      const report = await exportFiles(config, values.session, gen === undefined ? undefined : Number(gen), path.resolve(values.to), roots, values.overwrite === true);
      if (values.json) process.stdout.write(`${JSON.stringify(report)}\n`);
      else {
        process.stdout.write(`exported ${report.written.length} file(s) of generation ${report.generation} to ${shownName(path.resolve(values.to))}\n`);
        for (const x of report.skipped) process.stderr.write(`skipped ${shownName(x.guestPath)}: ${shownName(x.reason)}\n`);
        for (const x of report.refused) process.stderr.write(`not written: ${shownName(x)}\n`);
        if (report.truncated) process.stderr.write(`incomplete: generation ${report.generation} holds more entries than its listing; files beyond it were not exported\n`);
      }
      return report.refused.length > 0 || report.truncated ? 1 : 0;
    }
    if (action === 'ls' && patterns.length > 0) throw new UsageError('ls takes no patterns');
    if (action !== 'ls' && patterns.length === 0) throw new UsageError(`${action} needs at least one PATTERN`);
    const config = configFromFlags(values, { control: { enabled: false } });
    const persistence = new Persistence({ home: config.home, persist: config.persist });
    const sessionId = values.session;
    // The running companion when there is one (its clients hear about the change), else the store directly. A session
    // neither knows is an error (persist/known-session.ts), except that `add` may prepare the list of a new one.
    const get = async () => (await viaControlApi(config.home, 'getPersist', { sessionId }))
      ?? (await sessionKnownOnDisk(config.home, sessionId) ? (await localDisks(config, sessionId) ?? persistence).state(sessionId) : Promise.reject(unknownSession(sessionId)));
    const set = async (list: string[]) => (await viaControlApi(config.home, 'setPersist', { sessionId, patterns: list })) ?? persistence.setPatterns(sessionId, list);
    const isUnknownSession = (err: unknown) => err instanceof PerimeterError && (err.code === SESSION_UNKNOWN || err.code === 'control_not_found');
    let state = await get().catch((err: unknown) => { if (action === 'add' && isUnknownSession(err)) return null; throw err; });
    if (action !== 'ls') {
      const current = state?.patterns ?? [...config.persist.defaults];
      if (action === 'add') {
        state = await set([...current, ...patterns]);
      } else {
        const normalise = (p: string) => (p.length > 1 && p.endsWith('/') ? p.slice(0, -1) : p);
        const unknown = patterns.filter((p) => !current.includes(normalise(p)));
        if (unknown.length > 0) {
          const always = unknown.filter((p) => (ALWAYS_PERSISTED as readonly string[]).includes(normalise(p)));
          throw new UsageError(always.length > 0 ? `${always.join(', ')} is always persisted and cannot be removed`
            : `not in the persist list of ${sessionId}: ${unknown.join(', ')} (see perimeter persist ls --session ${sessionId})`);
        }
        state = await set(current.filter((p) => !patterns.map(normalise).includes(p)));
      }
    }
    if (!state) throw unknownSession(sessionId);
    const diskGeneration = action === 'ls' ? await DiskStore.peek(config.home, sessionId) : null;
    const disk = diskGeneration ? await diskEntries(config, sessionId, diskGeneration.generation) : null;
    if (values.json) process.stdout.write(`${JSON.stringify(disk ? { ...state, entries: disk.items, moreEntries: disk.nextCursor !== null } : state)}\n`);
    else process.stdout.write(`${render(state)}\n${disk ? `${renderDiskFiles(disk)}\n` : ''}`);
    return 0;
  },
};
