// The semantics of the six agent_toolset_20260401 tools (bash, read, write, edit, glob, grep), written once against
// the GuestOps interface so every sandbox driver behaves the same. Mirrors the reference toolset (SDK
// tools/agent-toolset/node.ts) in field names, caps, messages and error rules. Invariants:
// - Every outcome is a result, never a throw: bad input, guest errors and timeouts become `isError: true` text.
// - Result text is never empty ("(no output)") and never larger than the caps below; output over a cap keeps whole
//   lines and says, where it left text out, how many bytes and lines (truncate.ts).
// - grep runs the sandbox's rg, or where there is none, a search of the tool's own with the same output
//   (grep-fallback.ts).
// - File tools are confined (lexically) to WORKDIR and MEMORY_ROOT; the sandbox, not this check, is the security boundary.
// - bash runs in a fresh shell per call; cwd and exported variables carry over through `ShellState`, captured by an
//   EXIT trap into a state file inside the sandbox (the VM never receives anything but the tool input).
import path from 'node:path';
import { GuestError, type GuestOps } from '../guest/types';
import { ToolFailure } from '../errors';
import { SHELL_BASE_ENV, shellArgv } from '../guest/ready-shell';
import type { ShellState } from '../persist/types';
import { parseToolCall, type ToolCall, type ToolInputs, type ToolName } from './schemas';
import { cleanOutput, nonEmpty, trimTrailingNewlines } from './text';
import { globToRegExp } from './glob';
import { execGap, keepFirstLines, keepHeadAndTail } from './truncate';
import { searchWithoutRipgrep } from './grep-fallback';

export const WORKDIR = '/workspace';
/** Where the session's memory stores are mounted; the file tools may reach them too (as the reference's allowedRoots). */
export const MEMORY_ROOT = '/mnt/memory';
export const BASH_OUTPUT_LIMIT = 100 * 1024;
export const BASH_DEFAULT_TIMEOUT_MS = 120_000;
export const MAX_FILE_BYTES = 256 * 1024;
export const GREP_OUTPUT_LIMIT = 100 * 1024;
export const GREP_TIMEOUT_MS = 60_000;
export const GLOB_RESULT_LIMIT = 200;
export const GLOB_WALK_MAX_ENTRIES = 50_000;
const READ_CHUNK_BYTES = 64 * 1024;
/** Where the bash prelude saves the shell state (cwd, then NUL-terminated NAME=VALUE pairs) when the shell exits. */
export const SHELL_STATE_FILE = '/tmp/.perimeter-shell-state';
export const INITIAL_SHELL: Readonly<ShellState> = { cwd: WORKDIR, env: {} };

export interface ToolRunContext {
  sandbox: GuestOps;
  /** Shell state the bash tool starts from. */
  shell: ShellState;
  /** Host cap on one call's wall-clock time (config.sandbox.callTimeoutMs). */
  callTimeoutMs: number;
  /** Live output of a running command (bash, grep), already cleaned. */
  onOutput?: (chunk: string) => void;
  /** What the sandbox's template gives every call: environment variables under the session's own, and the
   *  directory a restarted shell starts in. */
  profile?: { env: Record<string, string>; workdir?: string };
}

export interface ToolOutcome {
  text: string;
  isError: boolean;
  exitCode: number | null;
  /** The shell state after a bash call (null when the tool does not touch the shell). */
  shell: ShellState | null;
  /** The command was killed at its time limit (session disks then keep nothing of the call). */
  timedOut?: boolean;
}

const ok = (text: string, extra: Partial<ToolOutcome> = {}): ToolOutcome => ({ text: nonEmpty(text), isError: false, exitCode: null, shell: null, ...extra });
const fail = (text: string, extra: Partial<ToolOutcome> = {}): ToolOutcome => ({ text: nonEmpty(text), isError: true, exitCode: null, shell: null, ...extra });

/** Runs one tool call from its raw input (parsed here; a bad input is an error result). Never throws for anything
 *  the model or the guest can cause. */
export async function runTool(name: ToolName, input: unknown, ctx: ToolRunContext): Promise<ToolOutcome> {
  const parsed = parseToolCall(name, input);
  return parsed.ok ? runToolCall(parsed.call, ctx) : fail(parsed.message);
}

/** Runs one tool call whose input was already parsed. Never throws for anything the model or the guest can cause. */
export async function runToolCall(call: ToolCall, ctx: ToolRunContext): Promise<ToolOutcome> {
  try {
    switch (call.name) {
      case 'bash': return await bash(call.input, ctx);
      case 'read': return ok(await read(call.input, ctx));
      case 'write': return ok(await write(call.input, ctx));
      case 'edit': return ok(await edit(call.input, ctx));
      case 'glob': return ok(await glob(call.input, ctx));
      case 'grep': return await grep(call.input, ctx);
    }
  } catch (err) {
    if (err instanceof ToolFailure) return fail(err.message);
    if (err instanceof GuestError) return fail(`${call.name}: ${err.message}`);
    return fail(`${call.name}: ${(err as Error)?.message ?? String(err)}`);
  }
}

/**
 * What a pooled sandbox runs before it is handed out (SandboxDriver.setWarmup): bash tool calls of `:` with the
 * base environment, then the state file they left is removed. Under TCG, code runs slowly the first time in each VM;
 * this pays for the bash tool's whole path (stale-state delete, exec, shell-state capture, state read) in the
 * background instead of in the user's first call. Two calls: the first takes the guest's ready shell, the second
 * (issued before the agent has started the next one) runs bash by fork and exec, so both ways are warm.
 */
export async function warmUpSandbox(sandbox: GuestOps): Promise<void> {
  for (let i = 0; i < 2; i++) {
    const r = await runTool('bash', { command: ':' }, { sandbox, shell: INITIAL_SHELL, callTimeoutMs: 30_000 });
    if (r.isError) throw new GuestError('EIO', `warm-up call failed: ${r.text}`);
  }
  await sandbox.putFiles([], [SHELL_STATE_FILE]);
}

// ---- paths ----------------------------------------------------------------------------------------------------

/** Resolves a tool path against the workdir; it must stay inside it. */
export function resolveToolPath(tool: string, p: string): string {
  if (p.includes('\0')) throw new ToolFailure(`${tool}: path ${JSON.stringify(p)} contains a NUL byte`);
  const abs = path.posix.normalize(p.startsWith('/') ? p : path.posix.join(WORKDIR, p));
  const clean = abs.length > 1 && abs.endsWith('/') ? abs.slice(0, -1) : abs;
  const inside = (root: string) => clean === root || clean.startsWith(`${root}/`);
  if (!inside(WORKDIR) && !inside(MEMORY_ROOT)) throw new ToolFailure(`${tool}: path ${JSON.stringify(p)} is outside ${WORKDIR} (and the memory stores under ${MEMORY_ROOT})`);
  return clean;
}

function guestMessage(tool: string, err: unknown, file: string): string {
  const code = err instanceof GuestError ? err.code : (err as NodeJS.ErrnoException)?.code;
  const detail: Record<string, string> = {
    ENOENT: 'no such file or directory', EACCES: 'permission denied', EPERM: 'permission denied', ENOTDIR: 'not a directory',
    EISDIR: 'is a directory', ELOOP: 'too many levels of symbolic links', ENAMETOOLONG: 'file name too long', ENOSPC: 'no space left on device',
  };
  return `${tool}: ${file}: ${(code && detail[code]) ?? (err as Error)?.message ?? String(err)}`;
}

async function guestCall<T>(tool: string, file: string, fn: () => Promise<T>): Promise<T> {
  try { return await fn(); } catch (err) {
    if (err instanceof ToolFailure) throw err;
    throw new ToolFailure(guestMessage(tool, err, file));
  }
}

// ---- bash -----------------------------------------------------------------------------------------------------

function shQuote(s: string): string { return `'${s.replace(/'/g, `'\\''`)}'`; }

/** Commands whose quoted form is longer than this travel on the shell's stdin instead of inside its `-c` script (an
 *  exec argument, and an agent protocol string, are bounded; a model may well send a 200 KB heredoc). */
export const BASH_INLINE_COMMAND_MAX = 32 * 1024;
/** The longest command the bash tool accepts. */
export const BASH_COMMAND_MAX = 4 * 1024 * 1024;
/** Runs a long command read from stdin (`$(cat)`: one fork, instead of bash's byte-at-a-time `read` from a pipe)
 *  with stdin at /dev/null, as an inline command would find it. */
const COMMAND_FROM_STDIN = '__perimeter_cmd="$(cat)"; exec 0</dev/null; builtin eval "$__perimeter_cmd"';

/**
 * The script run by `/bin/bash -c`, all on its first line: restores cwd, arms the state-saving EXIT trap, then runs
 * the command with `builtin eval`. Because that eval starts on line 1, the command's own lines are numbered from 1
 * ($LINENO, and `line N:` in bash's messages), as if the command were the whole script.
 * The trap saves `<cwd>\0NAME=VALUE\0…` (the exported, set, scalar variables, without PWD, OLDPWD, SHLVL and `_`;
 * under the process driver also without PERIMETER_GUEST_PREFIX and TMPDIR, and with HOME and cwd mapped back to
 * guest paths). It uses shell builtins only: under TCG every fork+exec in the guest costs 30-100 ms, so the only
 * process a bash call starts is the one its command starts. `builtin` keeps a function the command defined
 * (`cd`, `printf`) from taking over the trap. The values are written NUL-terminated by printf, so any byte but NUL
 * (newlines, `=`) survives.
 */
export function bashScript(command: string, cwd: string, commandOnStdin = false): string {
  return [
    '__perimeter_p="${PERIMETER_GUEST_PREFIX:-}";',
    '__perimeter_save() {',
    `local __perimeter_d __perimeter_n __perimeter_a __perimeter_f="$__perimeter_p${SHELL_STATE_FILE}";`,
    'local -a __perimeter_names;',
    // $PWD is what `pwd` prints, unless the command broke it (unset, assigned): then ask the kernel via `cd -P .`.
    'if ! [[ "$PWD" == /* && "$PWD" -ef . ]]; then builtin cd -P . 2>/dev/null; fi;',
    '__perimeter_d="${PWD#"$__perimeter_p"}";',
    // The names of the exported variables, passed through the state file itself (`$(compgen -e)` would fork a
    // subshell); `>|` because the command may have set noclobber.
    'builtin compgen -e >| "$__perimeter_f" 2>/dev/null && builtin mapfile -t __perimeter_names < "$__perimeter_f";',
    '{',
    "builtin printf '%s\\0' \"${__perimeter_d:-/}\";",
    'for __perimeter_n in "${__perimeter_names[@]}"; do',
    'case "$__perimeter_n" in PWD|OLDPWD|SHLVL|_|__perimeter_*) continue ;; esac;',
    'if [[ -n "$__perimeter_p" ]]; then case "$__perimeter_n" in PERIMETER_GUEST_PREFIX|TMPDIR|HOME) continue ;; esac; fi;',
    '__perimeter_a="${!__perimeter_n@a}";',
    'if [[ "$__perimeter_a" == *x* && "$__perimeter_a" != *[aA]* && -n "${!__perimeter_n+set}" ]]; then',
    "builtin printf '%s=%s\\0' \"$__perimeter_n\" \"${!__perimeter_n}\";",
    'fi;',
    'done;',
    "if [[ -n \"$__perimeter_p\" ]]; then builtin printf 'HOME=%s\\0' \"${HOME#\"$__perimeter_p\"}\"; fi;",
    '} >| "$__perimeter_f" 2>/dev/null;',
    '};',
    'trap __perimeter_save EXIT;',
    `builtin cd -- "$__perimeter_p"${shQuote(cwd)} 2>/dev/null || builtin cd -- "$__perimeter_p${WORKDIR}" 2>/dev/null;`,
    commandOnStdin ? COMMAND_FROM_STDIN : `builtin eval ${shQuote(command)}`,
  ].join(' ') + '\n';
}

export function parseShellState(data: Buffer): ShellState | null {
  const parts = data.toString('utf8').split('\0');
  const cwd = parts.shift();
  if (!cwd || !cwd.startsWith('/')) return null;
  const env: Record<string, string> = {};
  for (const p of parts) {
    const eq = p.indexOf('=');
    if (eq <= 0) continue;
    const k = p.slice(0, eq);
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k) || k.startsWith('__perimeter')) continue;
    env[k] = p.slice(eq + 1);
  }
  return { cwd: path.posix.normalize(cwd), env };
}

async function bash(input: ToolInputs['bash'], ctx: ToolRunContext): Promise<ToolOutcome> {
  let shell: ShellState = ctx.shell;
  if (input.restart) shell = { cwd: ctx.profile?.workdir ?? INITIAL_SHELL.cwd, env: {} };
  if (!input.command) {
    if (input.restart) return ok('bash session restarted', { shell });
    return fail('bash: command is required');
  }
  const timeoutMs = Math.min(input.timeout_ms && input.timeout_ms > 0 ? input.timeout_ms : BASH_DEFAULT_TIMEOUT_MS, ctx.callTimeoutMs);
  const env = { ...SHELL_BASE_ENV, ...ctx.profile?.env, ...shell.env };
  const commandBytes = Buffer.byteLength(input.command);
  if (commandBytes > BASH_COMMAND_MAX) return fail(`bash: the command is ${commandBytes} bytes; the limit is ${BASH_COMMAND_MAX} (write large content with the write tool)`);
  const onStdin = Buffer.byteLength(shQuote(input.command)) > BASH_INLINE_COMMAND_MAX;
  // A stale state file from an earlier call in the same sandbox must not be mistaken for this call's state.
  await ctx.sandbox.putFiles([], [SHELL_STATE_FILE]).catch(() => {});
  const res = await ctx.sandbox.exec(
    {
      argv: shellArgv(bashScript(input.command, shell.cwd || WORKDIR, onStdin)), env, timeoutMs, maxOutputBytes: BASH_OUTPUT_LIMIT,
      stdin: onStdin ? Buffer.from(input.command, 'utf8') : undefined,
    },
    ctx.onOutput ? (chunk) => ctx.onOutput!(cleanOutput(chunk)) : undefined,
  );
  let next: ShellState = shell;
  try {
    const { data } = await ctx.sandbox.readFile(SHELL_STATE_FILE);
    next = parseShellState(data) ?? shell;
  } catch { /* the shell was killed or exec'd away: keep the previous state */ }
  const text = trimTrailingNewlines(keepHeadAndTail(res.output, execGap(res), BASH_OUTPUT_LIMIT));
  if (res.timedOut) {
    const note = `bash: command timed out after ${timeoutMs} ms and was killed`;
    return fail(text ? `${text}\n${note}` : note, { exitCode: res.exitCode, shell: next, timedOut: true });
  }
  if (res.exitCode !== 0) return fail(text || `exit ${res.exitCode}`, { exitCode: res.exitCode, shell: next });
  return ok(text, { exitCode: 0, shell: next });
}

// ---- read / write / edit --------------------------------------------------------------------------------------

async function regularFile(tool: string, sandbox: GuestOps, abs: string, shown: string) {
  const st = await guestCall(tool, shown, () => sandbox.stat(abs));
  if (!st) throw new ToolFailure(`${tool}: ${shown}: no such file or directory`);
  if (st.type === 'dir') throw new ToolFailure(`${tool}: ${shown} is not a regular file`);
  return st;
}

async function read(input: ToolInputs['read'], ctx: ToolRunContext): Promise<string> {
  const abs = resolveToolPath('read', input.file_path);
  const range = input.view_range;
  if (range?.length && range.length !== 2) throw new ToolFailure('read: view_range must be [start_line, end_line]');
  const st = await regularFile('read', ctx.sandbox, abs, input.file_path);
  if (!range?.length) {
    if (st.size > MAX_FILE_BYTES) {
      throw new ToolFailure(`read: ${input.file_path} is ${st.size} bytes, exceeds ${MAX_FILE_BYTES}-byte limit. Use the view_range parameter to read specific line ranges, e.g. view_range: [1, 500].`);
    }
    const { data, size } = await guestCall('read', input.file_path, () => ctx.sandbox.readFile(abs, { length: MAX_FILE_BYTES + 1 }));
    if (size > MAX_FILE_BYTES) throw new ToolFailure(`read: ${input.file_path} is ${size} bytes, exceeds ${MAX_FILE_BYTES}-byte limit. Use the view_range parameter to read specific line ranges, e.g. view_range: [1, 500].`);
    return data.toString('utf8');
  }
  const [startLine, endLine] = range as [number, number];
  const start = Math.max(0, startLine - 1);
  const end = endLine > 0 ? endLine : Infinity;
  if (end <= start) return '';
  const collected: Buffer[] = [];
  let collectedBytes = 0;
  let line = 0;
  let offset = 0;
  for (;;) {
    const { data, size } = await guestCall('read', input.file_path, () => ctx.sandbox.readFile(abs, { offset, length: READ_CHUNK_BYTES }));
    if (data.length === 0) break;
    let pos = 0;
    while (pos < data.length && line < end) {
      const nl = data.indexOf(0x0a, pos);
      const lineEnd = nl < 0 ? data.length : nl;
      if (line >= start) {
        collected.push(data.subarray(pos, lineEnd));
        collectedBytes += lineEnd - pos;
        if (nl >= 0 && line + 1 < end) { collected.push(Buffer.from('\n')); collectedBytes += 1; }
        if (collectedBytes > MAX_FILE_BYTES) {
          throw new ToolFailure(end - start === 1
            ? `read: line ${start + 1} of ${input.file_path} alone exceeds ${MAX_FILE_BYTES}-byte limit. The read tool cannot return part of a line, so view_range cannot narrow this further.`
            : `read: view_range [${startLine}, ${endLine}] of ${input.file_path} exceeds ${MAX_FILE_BYTES}-byte limit. Narrow the view_range to read a smaller portion.`);
        }
      }
      if (nl < 0) break;
      line++;
      pos = nl + 1;
    }
    offset += data.length;
    if (line >= end || offset >= size) break;
  }
  return Buffer.concat(collected).toString('utf8');
}

async function write(input: ToolInputs['write'], ctx: ToolRunContext): Promise<string> {
  const abs = resolveToolPath('write', input.file_path);
  if (abs === WORKDIR) throw new ToolFailure(`write: ${input.file_path}: is a directory`);
  const st = await guestCall('write', input.file_path, () => ctx.sandbox.stat(abs));
  if (st?.type === 'dir') throw new ToolFailure(`write: ${input.file_path}: is a directory`);
  const data = Buffer.from(input.content, 'utf8');
  await guestCall('write', input.file_path, () => ctx.sandbox.writeFile(abs, data, { mode: st?.type === 'file' ? st.mode & 0o777 : 0o644 }));
  return `wrote ${data.length} bytes to ${input.file_path}`;
}

async function edit(input: ToolInputs['edit'], ctx: ToolRunContext): Promise<string> {
  const abs = resolveToolPath('edit', input.file_path);
  const st = await regularFile('edit', ctx.sandbox, abs, input.file_path);
  if (st.size > MAX_FILE_BYTES) {
    throw new ToolFailure(`edit: ${input.file_path} is ${st.size} bytes, exceeds ${MAX_FILE_BYTES}-byte limit. The edit tool loads the whole file and cannot modify a file this large.`);
  }
  const { data } = await guestCall('edit', input.file_path, () => ctx.sandbox.readFile(abs, { length: MAX_FILE_BYTES + 1 }));
  const text = data.toString('utf8');
  const count = text.split(input.old_string).length - 1;
  if (count === 0) throw new ToolFailure(`edit: old_string not found in ${input.file_path}`);
  let updated: string;
  if (input.replace_all) updated = text.split(input.old_string).join(input.new_string);
  else {
    if (count > 1) throw new ToolFailure(`edit: old_string appears ${count} times in ${input.file_path} (must be unique)`);
    updated = text.replace(input.old_string, () => input.new_string);
  }
  await guestCall('edit', input.file_path, () => ctx.sandbox.writeFile(abs, Buffer.from(updated, 'utf8'), { mode: st.type === 'file' ? st.mode & 0o777 : 0o644 }));
  return `edited ${input.file_path} (${input.replace_all ? count : 1} replacement(s))`;
}

// ---- glob / grep ----------------------------------------------------------------------------------------------

async function glob(input: ToolInputs['glob'], ctx: ToolRunContext): Promise<string> {
  if (input.pattern.startsWith('/')) throw new ToolFailure('glob: absolute pattern not permitted; pass a relative pattern (and optionally path)');
  if (input.pattern.split(/[\\/{},]/).includes('..')) throw new ToolFailure('glob: ".." is not permitted in the pattern');
  const root = input.path ? resolveToolPath('glob', input.path) : WORKDIR;
  const st = await guestCall('glob', input.path ?? root, () => ctx.sandbox.stat(root));
  if (!st) throw new ToolFailure(`glob: ${input.path ?? root}: no such file or directory`);
  if (st.type !== 'dir') throw new ToolFailure(`glob: ${input.path ?? root}: not a directory`);
  const re = globToRegExp(input.pattern);
  const { entries } = await guestCall('glob', input.path ?? root, () => ctx.sandbox.walk(root, { hash: false, maxEntries: GLOB_WALK_MAX_ENTRIES, skipNames: ['.git', 'node_modules'] }));
  const prefix = root === '/' ? '/' : `${root}/`;
  const matches = entries
    .filter((e) => e.type === 'file' && e.path.startsWith(prefix) && re.test(e.path.slice(prefix.length)))
    .sort((a, b) => b.mtimeMs - a.mtimeMs || a.path.localeCompare(b.path));
  if (matches.length === 0) return 'no matches';
  return matches.slice(0, GLOB_RESULT_LIMIT).map((m) => m.path).join('\n');
}

async function grep(input: ToolInputs['grep'], ctx: ToolRunContext): Promise<ToolOutcome> {
  const root = input.path ? resolveToolPath('grep', input.path) : WORKDIR;
  const st = await guestCall('grep', input.path ?? root, () => ctx.sandbox.stat(root));
  if (!st) throw new ToolFailure(`grep: ${input.path ?? root}: no such file or directory`);
  const timeoutMs = Math.min(GREP_TIMEOUT_MS, ctx.callTimeoutMs);
  // Run from `/` with a relative path so the process driver (which maps `/` onto its root) and VMs behave alike.
  const rel = root.slice(1) || '.';
  const res = await ctx.sandbox.exec({
    argv: ['rg', '--no-config', '-n', '--no-heading', '-e', input.pattern, '--', rel],
    cwd: '/', env: { PATH: SHELL_BASE_ENV.PATH!, LANG: 'C.UTF-8' },
    timeoutMs,
    maxOutputBytes: GREP_OUTPUT_LIMIT * 2,
  });
  if (res.timedOut) return fail(`grep: timed out after ${timeoutMs / 1000}s`);
  if (res.exitCode === 127) {
    // No rg in the sandbox: the tool's own search, in the same shape.
    const found = await searchWithoutRipgrep(ctx.sandbox, { root, rootIsDir: st.type === 'dir', pattern: input.pattern, timeoutMs });
    if (!found.ok) return fail(found.message);
    if (found.lines.length === 0) return ok(['no matches', ...found.notes].join('\n'), { exitCode: 1 });
    return ok([keepFirstLines(found.lines.map((l) => cleanOutput(l)), GREP_OUTPUT_LIMIT), ...found.notes].join('\n'), { exitCode: 0 });
  }
  if (res.exitCode === 1) return ok('no matches', { exitCode: 1 });
  if (res.exitCode !== 0) return fail(`grep: rg failed: ${trimTrailingNewlines(cleanOutput(res.output)) || `exit ${res.exitCode}`}`, { exitCode: res.exitCode });
  // Whole lines received before any bytes the sandbox dropped are shown (as many as fit); the rest is counted.
  const gap = execGap(res);
  const received = gap ? res.output.subarray(0, gap.at > 0 ? res.output.lastIndexOf(0x0a, gap.at - 1) + 1 : 0) : res.output;
  const unseenRaw = res.output.subarray(received.length);
  const lines = cleanOutput(received).split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  let unseenNewlines: number | null = gap && gap.newlines === null ? null : (gap?.newlines ?? 0);
  if (unseenNewlines !== null) for (let i = unseenRaw.indexOf(0x0a); i >= 0; i = unseenRaw.indexOf(0x0a, i + 1)) unseenNewlines++;
  // rg names files relative to `/`; the tool shows them absolute (one more byte on each line it did not show, too).
  const dirMode = st.type === 'dir';
  const from = rel === '.' ? './' : `${rel}/`;
  const shown = dirMode ? lines.map((l) => (l.startsWith(from) ? `/${rel === '.' ? '' : `${rel}/`}${l.slice(from.length)}` : l)) : lines;
  const unseenBytes = unseenRaw.length + (gap?.bytes ?? 0) + (dirMode ? unseenNewlines ?? 0 : 0);
  return ok(keepFirstLines(shown, GREP_OUTPUT_LIMIT, { bytes: unseenBytes, newlines: unseenNewlines }), { exitCode: 0 });
}
