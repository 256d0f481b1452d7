// Input checks for what users type into Perimeter's input boxes. Pure (no `vscode`), unit-tested; each returns an
// error message for the input box, or undefined when the value is acceptable.
import { PersistPattern } from '../companion/protocol/control';

/** A plausible environment key: no whitespace or control characters, sensible length. */
export function validateKeyInput(value: string): string | undefined {
  const v = value.trim();
  if (!v) return 'Enter the environment key';
  // eslint-disable-next-line no-control-regex
  if (/[\s\u0000-\u001f\u007f]/.test(v)) return 'The key must not contain spaces or control characters';
  if (v.length < 16 || v.length > 512) return 'That does not look like an environment key';
  return undefined;
}

export function validateEnvironmentId(value: string): string | undefined {
  const v = value.trim();
  if (!v) return 'Enter the environment ID';
  if (!/^[A-Za-z0-9][A-Za-z0-9_-]{2,127}$/.test(v)) return 'An environment ID starts with a letter or digit and has only letters, digits, "_" and "-"';
  return undefined;
}

/** A path to persist: absolute, inside the guest, no NUL/newline, no `..` components. */
export function validatePersistPath(value: string, existing: string[] = []): string | undefined {
  const v = value.trim();
  const parsed = PersistPattern.safeParse(v);
  if (!parsed.success) return 'Enter an absolute path inside the sandbox, e.g. /data or /workspace/cache';
  if (v.split('/').includes('..')) return 'The path must not contain ".."';
  if (existing.includes(v)) return `${v} is already persisted`;
  return undefined;
}
