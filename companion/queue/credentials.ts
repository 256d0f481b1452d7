// Where the worker's one credential, the environment key, comes from: `--key-file F` (must not be readable by group
// or others), `--key-stdin`, the systemd credential `environment-key` (`$CREDENTIALS_DIRECTORY/environment-key`, put
// there by the unit's LoadCredential= or SetCredentialEncrypted=: see companion/service/unit.ts), or
// ANTHROPIC_ENVIRONMENT_KEY. Invariants:
// - The worker refuses to start while ANTHROPIC_API_KEY is set: an organisation key must never be on a worker host.
// - The key is registered with the logger's redaction and removed from process.env, so no child process (sandbox,
//   VMM, rg) inherits it; the worker also erases it from /proc/<pid>/environ (queue/environ.ts). It is never logged,
//   never put on a command line, never sent into a sandbox.
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fatal } from '../errors';
import { registerSecret } from '../log';

/** Variables that may carry a credential; the worker removes them from its environment (see queue/environ.ts). */
export const SECRET_ENV_NAMES = ['ANTHROPIC_ENVIRONMENT_KEY', 'ANTHROPIC_WORK_SECRET', 'ANTHROPIC_AUTH_TOKEN'] as const;

/** The name of the systemd credential holding the environment key. */
export const ENVIRONMENT_KEY_CREDENTIAL = 'environment-key';

export interface KeySource {
  keyFile?: string;
  keyStdin?: boolean;
  env?: NodeJS.ProcessEnv;
  stdin?: NodeJS.ReadableStream;
}

/** Fails when an organisation API key is present in the environment. */
export function refuseApiKey(env: NodeJS.ProcessEnv = process.env): void {
  if (env.ANTHROPIC_API_KEY) {
    throw fatal('api_key_present',
      'ANTHROPIC_API_KEY is set in this environment. The worker only needs the environment key and refuses to run next to an ' +
      'organisation-scoped API key (it would be exposed to the host running agent tool calls). Unset it and start again.');
  }
}

function validate(key: string, source: string): string {
  const k = key.trim();
  if (!k) throw fatal('key_missing', `the environment key from ${source} is empty`);
  if (/\s/.test(k)) throw fatal('key_invalid', `the environment key from ${source} contains whitespace; expected a single token`);
  if (k.length < 16) throw fatal('key_invalid', `the environment key from ${source} is too short to be a key`);
  return k;
}

async function readStdin(stream: NodeJS.ReadableStream): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of stream) {
    chunks.push(typeof c === 'string' ? Buffer.from(c) : (c as Buffer));
    if (Buffer.concat(chunks).includes(0x0a)) break;
  }
  return Buffer.concat(chunks).toString('utf8').split('\n')[0] ?? '';
}

/** Reads a key from a regular file that neither group nor others can read. */
async function readKeyFile(file: string, what: string): Promise<string> {
  let st;
  try { st = await fs.stat(file); } catch (err) { throw fatal('key_file_unreadable', `cannot read ${what} ${file}: ${(err as Error).message}`); }
  if (!st.isFile()) throw fatal('key_file_invalid', `${what} ${file} is not a regular file`);
  if (st.mode & 0o077) {
    throw fatal('key_file_permissions', `${what} ${file} is readable by group or others (mode ${(st.mode & 0o777).toString(8)}); run: chmod 600 ${file}`);
  }
  return validate(await fs.readFile(file, 'utf8'), `${what} ${file}`);
}

/** Loads the environment key (see the module header for the order) and scrubs it from the process environment. */
export async function loadEnvironmentKey(src: KeySource = {}): Promise<string> {
  const env = src.env ?? process.env;
  refuseApiKey(env);
  let key: string;
  if (src.keyFile) {
    key = await readKeyFile(src.keyFile, 'key file');
  } else if (src.keyStdin) {
    key = validate(await readStdin(src.stdin ?? process.stdin), 'stdin');
  } else if (env.CREDENTIALS_DIRECTORY) {
    key = await readKeyFile(path.join(env.CREDENTIALS_DIRECTORY, ENVIRONMENT_KEY_CREDENTIAL), 'systemd credential');
  } else if (env.ANTHROPIC_ENVIRONMENT_KEY) {
    key = validate(env.ANTHROPIC_ENVIRONMENT_KEY, 'ANTHROPIC_ENVIRONMENT_KEY');
  } else {
    throw fatal('key_missing', 'no environment key: set ANTHROPIC_ENVIRONMENT_KEY, or pass --key-file FILE (mode 0600) or --key-stdin, or run it as a service (perimeter service install)');
  }
  registerSecret(key);
  for (const name of SECRET_ENV_NAMES) delete env[name];
  return key;
}
