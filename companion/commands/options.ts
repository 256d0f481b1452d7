// Shared command-line handling: node:util parseArgs with strict options, the flags every companion command accepts
// (--home, --log-level, --driver, --mode, --concurrency), and the mapping of those flags onto the typed Config.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { loadConfig, type Config } from '../config';
import type { WorkerLaunch } from '../protocol/launch';
import { fatal } from '../errors';
import { setLogLevel, type LogLevel } from '../log';

export const CONFIG_FLAGS = {
  home: { type: 'string' },
  'log-level': { type: 'string' },
  driver: { type: 'string' },
  mode: { type: 'string' },
  concurrency: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies NonNullable<ParseArgsConfig['options']>;

/** How a command is told which environment to serve and where its key is (the key itself never on the command line). */
export const ENVIRONMENT_FLAGS = {
  'environment-id': { type: 'string' },
  'key-file': { type: 'string' },
  'key-stdin': { type: 'boolean' },
} as const satisfies NonNullable<ParseArgsConfig['options']>;

export class UsageError extends Error {}

export function parse<O extends NonNullable<ParseArgsConfig['options']>>(argv: string[], options: O) {
  try {
    return parseArgs({ args: argv, options, strict: true, allowPositionals: false });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

function intFlag(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n)) throw new UsageError(`--${name} must be an integer, got ${JSON.stringify(v)}`);
  return n;
}
export { intFlag };

/** Builds the Config from the shared flags plus command-specific overrides (and a launcher's launch, if any). */
export function configFromFlags(values: Record<string, unknown>, extra: Record<string, unknown> = {}, launch?: WorkerLaunch): Config {
  const sandbox: Record<string, unknown> = {};
  if (values.driver !== undefined) sandbox.driver = values.driver;
  if (values.mode !== undefined) sandbox.mode = values.mode;
  if (values['allow-no-isolation'] === true) sandbox.allowNoIsolation = true;
  const config = loadConfig({
    home: values.home as string | undefined,
    logLevel: values['log-level'] as string | undefined,
    concurrency: intFlag('concurrency', values.concurrency as string | undefined),
    ...(Object.keys(sandbox).length ? { sandbox } : {}),
    ...extra,
  }, process.env, launch);
  setLogLevel(config.logLevel as LogLevel);
  return config;
}

export function requireValue<T>(v: T | undefined, message: string): T {
  if (v === undefined || v === '') throw fatal('missing_option', message);
  return v;
}
