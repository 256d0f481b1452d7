// Recreates, inside the guest, what putFiles cannot: empty directories, symlinks (whose targets are data from the
// store and only ever exist in the guest), and files larger than one agent message (sent as parts, joined here).
// Fixed bash scripts read NUL-separated records from stdin, so no persisted name or target is ever parsed by a shell
// or placed on a command line.
import { GuestError, type ExecResult, type GuestOps } from '../guest/types';
import { logger } from '../log';
import { SHELL_BASE_ENV, shellArgv } from '../guest/ready-shell';

const log = logger('persist');
const TIMEOUT_MS = 120_000;

/** Creates empty directories and symlinks in the guest from NUL-separated records on stdin:
 *  `d\0<path>\0` or `l\0<target>\0<path>\0`. Data never reaches the command line. */
export const MATERIALISE_SCRIPT = [
  'P="${PERIMETER_GUEST_PREFIX:-}"; fail=0',
  'while IFS= read -r -d "" kind; do',
  '  case "$kind" in',
  '    d) IFS= read -r -d "" p || exit 2; mkdir -p -- "$P$p" || fail=1 ;;',
  '    l) IFS= read -r -d "" t || exit 2; IFS= read -r -d "" p || exit 2',
  '       mkdir -p -- "$P${p%/*}" && rm -f -- "$P$p" && ln -s -- "$t" "$P$p" || fail=1 ;;',
  '    *) exit 2 ;;',
  '  esac',
  'done',
  'exit $fail',
].join('\n');

/** Runs one of this module's bash scripts in the guest with NUL-separated fields on stdin (names never hit argv). */
function runScript(sandbox: GuestOps, script: string, fields: string[]): Promise<ExecResult> {
  return sandbox.exec({
    argv: shellArgv(script),
    env: { PATH: SHELL_BASE_ENV.PATH!, LANG: 'C.UTF-8' },
    cwd: '/',
    stdin: Buffer.from(`${fields.join('\0')}\0`, 'utf8'),
    timeoutMs: TIMEOUT_MS,
    maxOutputBytes: 8192,
  });
}

export type MaterialiseRecord = { dir: string } | { link: string; target: string };

/** Creates the directories and symlinks; failures are logged (the files themselves are already in place). */
export async function materialise(sandbox: GuestOps, records: MaterialiseRecord[]): Promise<void> {
  if (records.length === 0) return;
  const fields: string[] = [];
  for (const r of records) {
    if ('dir' in r) fields.push('d', r.dir);
    else fields.push('l', r.target, r.link);
  }
  const res = await runScript(sandbox, MATERIALISE_SCRIPT, fields);
  if (res.exitCode !== 0) log.warn(`copy-in: some directories or symlinks could not be recreated (exit ${res.exitCode}): ${res.output.toString('utf8').slice(0, 500)}`);
}

/** Joins parts already placed in the guest into `target` (then removes them), applies mode and mtime, renames. On
 *  failure (no space left) it removes the partial file and the parts, so the space is free again. */
export const JOIN_SCRIPT = [
  'P="${PERIMETER_GUEST_PREFIX:-}"',
  'IFS= read -r -d "" t && IFS= read -r -d "" m && IFS= read -r -d "" s && IFS= read -r -d "" n || exit 2',
  'tmp="$P$t.perimeter-join"; parts=()',
  'for ((i = 0; i < n; i++)); do IFS= read -r -d "" part || exit 2; parts+=("$P$part"); done',
  'fail() { rm -f -- "$tmp" "${parts[@]}"; exit 1; }',
  ': > "$tmp" || fail',
  'for part in "${parts[@]}"; do cat -- "$part" >> "$tmp" && rm -f -- "$part" || fail; done',
  'chmod -- "$m" "$tmp" || fail',
  'touch -m -d "@$s" -- "$tmp" 2>/dev/null',
  'mv -f -- "$tmp" "$P$t" || fail',
].join('\n');

/** Joins `parts` into `target`; a failure is a GuestError (ENOSPC when the guest ran out of space). */
export async function joinParts(sandbox: GuestOps, target: string, mode: number, mtimeMs: number, parts: string[]): Promise<void> {
  const fields = [target, mode.toString(8), (mtimeMs / 1000).toFixed(3), String(parts.length), ...parts];
  const res = await runScript(sandbox, JOIN_SCRIPT, fields);
  if (res.exitCode === 0) return;
  const output = res.output.toString('utf8').slice(0, 300);
  const code = /No space left on device/i.test(output) ? 'ENOSPC' : 'EIO';
  throw new GuestError(code, `could not assemble ${target} in the sandbox (exit ${res.exitCode}): ${output}`);
}
