// `perimeter environment check --environment-id ID [--key-stdin | --key-file F] [--base-url URL] [--json]`: asks the
// API, through the SDK and this host's network route, whether the environment ID and key are accepted, without
// claiming anything (the environment key's read-only `work.stats`). Connect Environment runs it on the selected host
// before it stores the key. Prints one line (or an EnvironmentCheck as JSON); exit 0 when accepted, 1 when refused or
// unreachable. The key is read as the worker reads it, registered for redaction and never printed.
import Anthropic from '@anthropic-ai/sdk';
import { EnvironmentCheck, verdictOf } from '../protocol/environment';
import { loadEnvironmentKey, refuseApiKey } from '../queue/credentials';
import { causeChain, errorMessage } from '../errors';
import { redact } from '../log';
import { CONFIG_FLAGS, ENVIRONMENT_FLAGS, configFromFlags, parse, requireValue, UsageError } from './options';
import type { Command } from './types';

const USAGE = `usage: perimeter environment check --environment-id ID [--key-stdin | --key-file FILE] [--base-url URL] [--json]
Checks the ID and key against the API (read-only: the queue's stats; nothing is claimed). Exit 0 when accepted.`;
const CHECK_TIMEOUT_MS = 20_000;

export async function checkEnvironment(environmentId: string, key: string, baseUrl: string): Promise<EnvironmentCheck> {
  const client = new Anthropic({ apiKey: null, authToken: key, baseURL: baseUrl, maxRetries: 1, timeout: CHECK_TIMEOUT_MS });
  try {
    const stats = await client.beta.environments.work.stats(environmentId);
    return { verdict: 'ok', environmentId, baseUrl, status: 200, detail: `accepted; ${stats.depth} work item(s) queued`, queued: stats.depth };
  } catch (err) {
    const status = err instanceof Anthropic.APIError && typeof err.status === 'number' ? err.status : null;
    const body = err instanceof Anthropic.APIError ? (err.error as { error?: { message?: string } } | undefined)?.error?.message : undefined;
    const detail = status === null ? causeChain(err) : `${status} ${body ?? errorMessage(err)}`;
    return { verdict: verdictOf(status), environmentId, baseUrl, status, detail: redact(detail.split('\n')[0]!), queued: null };
  }
}

export const environmentCommand: Command = {
  name: 'environment',
  summary: 'check a self_hosted environment\'s ID and key against the API (read-only)',
  async run(argv) {
    const [sub, ...rest] = argv;
    if (sub === '--help' || sub === '-h') { process.stdout.write(`${USAGE}\n`); return 0; }
    if (sub !== 'check') throw new UsageError(`unknown subcommand ${JSON.stringify(sub ?? '')}; expected "check"`);
    const { values } = parse(rest, {
      ...CONFIG_FLAGS,
      ...ENVIRONMENT_FLAGS,
      'base-url': { type: 'string' },
      json: { type: 'boolean' },
    });
    if (values.help) { process.stdout.write(`${USAGE}\n`); return 0; }
    refuseApiKey();
    const config = configFromFlags(values, { environmentId: values['environment-id'], baseUrl: values['base-url'] });
    const environmentId = requireValue(config.environmentId, 'no environment id: pass --environment-id or set ANTHROPIC_ENVIRONMENT_ID');
    const key = await loadEnvironmentKey({ keyFile: values['key-file'], keyStdin: values['key-stdin'] });
    const result = EnvironmentCheck.parse(await checkEnvironment(environmentId, key, config.baseUrl ?? 'https://api.anthropic.com'));
    process.stdout.write(values.json ? `${JSON.stringify(result)}\n` : `${result.verdict}: ${result.detail} (${result.baseUrl})\n`);
    return result.verdict === 'ok' ? 0 : 1;
  },
};
