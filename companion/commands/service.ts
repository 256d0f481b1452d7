// `perimeter service install|uninstall|status`: runs the worker as a systemd service (companion/service/install.ts,
// unit.ts). The environment key comes from --key-file, --key-stdin or ANTHROPIC_ENVIRONMENT_KEY (as for `perimeter
// worker`) and goes into the service only as its systemd credential.
import { loadEnvironmentKey, SECRET_ENV_NAMES } from '../queue/credentials';
import { scrubEnviron } from '../queue/environ';
import { loadConfig } from '../config';
import { defaultCredentialKind, installService, serviceStatus, uninstallService, SYSTEM_USER } from '../service/install';
import type { ServiceScope } from '../service/unit';
import { ENVIRONMENT_FLAGS, intFlag, parse, requireValue, UsageError } from './options';
import type { Command } from './types';

const USAGE = `usage: perimeter service install [--system | --user] [--environment-id ID] [--key-file FILE | --key-stdin]
                                 [--credential encrypted|file] [--run-as USER] [--metrics HOST:PORT]
                                 [--concurrency N] [--drain-timeout-ms MS] [--no-start] [--root DIR]
       perimeter service uninstall [--system | --user] [--root DIR]
       perimeter service status [--system | --user] [--root DIR] [--json]
--system (the default as root): /etc/systemd/system/perimeter.service, runs as the user ${SYSTEM_USER} (created if
missing; --run-as root to keep root) with the kvm group, state in /var/lib/perimeter. --user (the default otherwise):
~/.config/systemd/user/perimeter.service, state where the companion keeps it by default.
The key becomes the credential environment-key: encrypted with systemd-creds (the system service's default) or a
0600 file read through LoadCredential= (--credential file; always for --user).
--root DIR writes an offline install below DIR (nothing is started). status exits 0 when the service runs, 3 when it
is not installed or not running.`;

const FLAGS = {
  system: { type: 'boolean' },
  user: { type: 'boolean' },
  root: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

function scopeOf(values: { system?: boolean; user?: boolean }): ServiceScope {
  if (values.system && values.user) throw new UsageError('--system and --user exclude each other');
  if (values.system) return 'system';
  if (values.user) return 'user';
  return process.getuid?.() === 0 ? 'system' : 'user';
}

export const serviceCommand: Command = {
  name: 'service',
  summary: 'install, remove or inspect the worker as a systemd service',
  async run(argv) {
    const [verb, ...rest] = argv;
    const out = (l: string) => process.stdout.write(`${l}\n`);
    switch (verb) {
      case 'install': {
        const { values } = parse(rest, {
          ...FLAGS, ...ENVIRONMENT_FLAGS,
          credential: { type: 'string' }, 'run-as': { type: 'string' }, metrics: { type: 'string' }, concurrency: { type: 'string' },
          'drain-timeout-ms': { type: 'string' }, 'no-start': { type: 'boolean' },
        });
        if (values.help) { out(USAGE); return 0; }
        const scope = scopeOf(values);
        const credential = values.credential ?? defaultCredentialKind(scope);
        if (credential !== 'encrypted' && credential !== 'file') throw new UsageError('--credential is encrypted or file');
        const environmentId = requireValue(values['environment-id'] ?? loadConfig({}).environmentId, 'no environment id: pass --environment-id or set ANTHROPIC_ENVIRONMENT_ID');
        const key = await loadEnvironmentKey({ keyFile: values['key-file'], keyStdin: values['key-stdin'] });
        scrubEnviron(SECRET_ENV_NAMES);
        const r = installService({
          scope, environmentId, key, credential, runAs: values['run-as'] ?? SYSTEM_USER, metrics: values.metrics,
          concurrency: intFlag('concurrency', values.concurrency), drainTimeoutMs: intFlag('drain-timeout-ms', values['drain-timeout-ms']),
          root: values.root, noStart: values['no-start'], log: out,
        });
        out(`installed ${r.unitFile}: the key as ${r.credential}, state in ${r.home}${r.started ? '; started' : ''}`);
        out(`the service needs a VM template in its state directory: PERIMETER_HOME=${r.home} node ${r.cli} template build${scope === 'system' ? ` (as the service user, or chown -R it afterwards)` : ''}`);
        return 0;
      }
      case 'uninstall': {
        const { values } = parse(rest, FLAGS);
        if (values.help) { out(USAGE); return 0; }
        const removed = uninstallService(scopeOf(values), { root: values.root, log: out });
        if (!removed) out('the service is not installed');
        return 0;
      }
      case 'status': {
        const { values } = parse(rest, { ...FLAGS, json: { type: 'boolean' } });
        if (values.help) { out(USAGE); return 0; }
        const s = serviceStatus(scopeOf(values), { root: values.root });
        if (values.json) out(JSON.stringify(s));
        else if (!s.installed) out(`not installed (${s.unitFile})`);
        else out(`${s.unitFile}: environment ${s.environmentId ?? '?'}, key as ${s.credential === 'encrypted' ? 'an encrypted credential' : 'a credential file'}, ${s.enabled ?? 'enabled state unknown'}, ${s.active ?? 'activity unknown'}`);
        return s.installed && (s.active === 'active' || (values.root !== undefined && s.enabled === 'enabled')) ? 0 : 3;
      }
      default:
        if (verb === undefined || verb === '--help' || verb === '-h') { out(USAGE); return verb ? 0 : 2; }
        throw new UsageError(`unknown service command "${verb}": install, uninstall or status`);
    }
  },
};
