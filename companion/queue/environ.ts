// Takes secrets out of this process's environment for good. Deleting a variable from process.env unsets it for this
// process and its children, but the kernel keeps showing the environment the process was started with in
// /proc/<pid>/environ, and Node cannot re-execute itself in place. On Linux that initial environment is a block of
// this process's own memory (env_start..env_end in /proc/self/stat); each secret's `NAME=value` entry there is
// overwritten with NUL bytes through /proc/self/mem, after libc's environ no longer points at it (process.env
// deletion first). Invariant: when scrubEnviron returns, /proc/self/environ holds none of the named variables; when
// that cannot be achieved it throws (fail closed: the caller does not start with the secret readable).
import { closeSync, existsSync, openSync, readFileSync, writeSync } from 'node:fs';
import { fatal } from '../errors';

/** env_start and env_end: fields 50 and 51 of /proc/self/stat (Linux 3.5+). */
function environBounds(): { start: number; end: number } {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');   // fields[0] is field 3 (state)
  const start = Number(fields[50 - 3]);
  const end = Number(fields[51 - 3]);
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || end <= start) throw new Error('/proc/self/stat has no environment bounds');
  return { start, end };
}

/** Byte ranges of the entries named `names` in an environ block (NUL-separated `NAME=value` strings). */
export function entriesNamed(block: Buffer, names: readonly string[]): Array<{ offset: number; length: number }> {
  const out: Array<{ offset: number; length: number }> = [];
  for (let offset = 0; offset < block.length;) {
    let end = block.indexOf(0, offset);
    if (end < 0) end = block.length;
    const entry = block.subarray(offset, end).toString('latin1');
    if (names.some((n) => entry.startsWith(`${n}=`))) out.push({ offset, length: end - offset });
    offset = end + 1;
  }
  return out;
}

/** Unsets `names` in process.env and erases them from this process's initial environment block. */
export function scrubEnviron(names: readonly string[]): void {
  for (const n of names) delete process.env[n];
  if (!existsSync('/proc/self/environ')) return;   // no /proc: nothing shows the initial environment
  const before = entriesNamed(readFileSync('/proc/self/environ'), names);
  if (before.length === 0) return;
  try {
    const { start } = environBounds();
    const fd = openSync('/proc/self/mem', 'r+');
    try {
      for (const e of before) writeSync(fd, Buffer.alloc(e.length), 0, e.length, start + e.offset);
    } finally { closeSync(fd); }
  } catch (err) {
    throw fatal('environ_scrub_failed', `the environment key would stay readable in /proc/${process.pid}/environ ` +
      `(${(err as Error).message}); pass it with --key-stdin or --key-file (mode 0600) instead`);
  }
  const left = entriesNamed(readFileSync('/proc/self/environ'), names);
  if (left.length) throw fatal('environ_scrub_failed', `the environment key stays readable in /proc/${process.pid}/environ; pass it with --key-stdin or --key-file (mode 0600) instead`);
}
