// Shell continuity: the working directory and exported variables one `bash` call leaves for the next. The state
// comes out of the guest, so it is validated like any guest data and bounded; variables that hold credentials
// (ANTHROPIC_*, anything named like a secret, anything whose value looks like an Anthropic key) are never stored,
// and shell-internal variables that bash sets by itself are not carried.
import type { ShellState } from './types';
import { checkGuestPath } from './paths';

export const DEFAULT_SHELL: ShellState = Object.freeze({ cwd: '/workspace', env: Object.freeze({}) as Record<string, string> }) as ShellState;

export const SHELL_LIMITS = { maxVars: 256, maxNameLength: 128, maxValueBytes: 32 * 1024, maxTotalBytes: 256 * 1024 } as const;

const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const SECRET_NAME = /(^ANTHROPIC_)|SECRET|TOKEN|PASSW(OR)?D|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL|AUTH/i;
const SECRET_VALUE = /sk-ant-/;
/** Set by bash itself or meaningless in a new process. */
const SHELL_INTERNAL = new Set(['PWD', 'OLDPWD', 'SHLVL', '_', 'BASHOPTS', 'SHELLOPTS', 'BASHPID', 'PPID', 'UID', 'EUID', 'HOSTNAME', 'RANDOM', 'SECONDS', 'LINENO']);
// eslint-disable-next-line no-control-regex
const NUL = /\u0000/;

export interface SanitizedShell {
  /** What may be stored; null when the state itself is unusable (e.g. a relative cwd). */
  shell: ShellState | null;
  /** Exported variables left out on purpose (secret-looking or too large), for a note to the model. */
  dropped: string[];
}

export function sanitizeShell(raw: unknown): SanitizedShell {
  const dropped: string[] = [];
  if (typeof raw !== 'object' || raw === null) return { shell: null, dropped };
  const { cwd, env } = raw as { cwd?: unknown; env?: unknown };
  if (typeof cwd !== 'string' || (cwd !== '/' && checkGuestPath(cwd) !== null)) return { shell: null, dropped };
  const out: Record<string, string> = {};
  let count = 0;
  let total = 0;
  if (typeof env === 'object' && env !== null) {
    for (const [name, value] of Object.entries(env as Record<string, unknown>)) {
      if (typeof value !== 'string' || !NAME.test(name) || name.length > SHELL_LIMITS.maxNameLength) continue;
      if (SHELL_INTERNAL.has(name) || name.startsWith('BASH_') || NUL.test(value)) continue;
      if (SECRET_NAME.test(name) || SECRET_VALUE.test(value)) { dropped.push(`${name} (looks like a secret)`); continue; }
      const bytes = Buffer.byteLength(value, 'utf8') + name.length;
      if (bytes > SHELL_LIMITS.maxValueBytes || total + bytes > SHELL_LIMITS.maxTotalBytes || count >= SHELL_LIMITS.maxVars) { dropped.push(`${name} (too large)`); continue; }
      out[name] = value;
      count += 1;
      total += bytes;
    }
  }
  return { shell: { cwd, env: out }, dropped };
}

export function sameShell(a: ShellState | null, b: ShellState | null): boolean {
  if (a === null || b === null) return a === b;
  if (a.cwd !== b.cwd) return false;
  const ka = Object.keys(a.env);
  return ka.length === Object.keys(b.env).length && ka.every((k) => b.env[k] === a.env[k]);
}
