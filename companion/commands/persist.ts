// `perimeter persist add|rm|ls --session ID [--home DIR] [--json] [PATTERN...]`: view and change a session's persist
// list (guest paths, directories or globs such as /workspace/** ) and see what its latest generation holds. Works on
// the state directory directly; a running companion reads the list at every call, so a change applies from the
// next tool call on. Every pattern is validated (companion/persist/paths.ts) before anything is written.
import { parseArgs } from 'node:util';
import { Persistence, ALWAYS_PERSISTED, formatBytes } from '../persist/persistence';
import type { PersistState } from '../protocol/control';
import { CONFIG_FLAGS, UsageError, configFromFlags } from './options';
import type { Command } from './types';

const USAGE = [
  'usage: perimeter persist ls  --session ID [--json] [--home DIR]',
  '       perimeter persist add --session ID PATTERN... [--json] [--home DIR]',
  '       perimeter persist rm  --session ID PATTERN... [--json] [--home DIR]',
  '',
  'PATTERN is an absolute guest path: a directory (/workspace), a file, or a glob (/home/agent/.cache/pip/**,',
  `/workspace/**/*.py). ${ALWAYS_PERSISTED.join(' and ')} are always carried.`,
].join('\n');

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
    for (const f of state.files) lines.push(`  ${f.mode.toString(8).padStart(4, '0')} ${String(f.size).padStart(10)}  ${JSON.stringify(f.path).slice(1, -1)}`);
    if (count > state.files.length) lines.push(`  … and ${count - state.files.length} more`);
  }
  return lines.join('\n');
}

export const persistCommand: Command = {
  name: 'persist',
  summary: 'show or change which guest paths a session carries from call to call',
  async run(argv) {
    let parsed;
    try {
      parsed = parseArgs({ args: argv, options: { ...CONFIG_FLAGS, session: { type: 'string' }, json: { type: 'boolean' } }, strict: true, allowPositionals: true });
    } catch (err) { throw new UsageError((err as Error).message); }
    const { values, positionals } = parsed;
    if (values.help) { process.stdout.write(`${USAGE}\n`); return 0; }
    const [action, ...patterns] = positionals;
    if (action !== 'ls' && action !== 'add' && action !== 'rm') throw new UsageError('expected one of: ls, add, rm');
    if (!values.session) throw new UsageError('--session ID is required');
    if (action === 'ls' && patterns.length > 0) throw new UsageError('ls takes no patterns');
    if (action !== 'ls' && patterns.length === 0) throw new UsageError(`${action} needs at least one PATTERN`);
    const config = configFromFlags(values, { control: { enabled: false } });
    const persistence = new Persistence({ home: config.home, persist: config.persist });
    const sessionId = values.session;
    let state: PersistState;
    if (action === 'ls') {
      state = await persistence.state(sessionId);
    } else {
      const current = await persistence.patterns(sessionId);
      if (action === 'add') {
        state = await persistence.setPatterns(sessionId, [...current, ...patterns]);
      } else {
        const normalise = (p: string) => (p.length > 1 && p.endsWith('/') ? p.slice(0, -1) : p);
        const unknown = patterns.filter((p) => !current.includes(normalise(p)));
        if (unknown.length > 0) {
          const always = unknown.filter((p) => (ALWAYS_PERSISTED as readonly string[]).includes(normalise(p)));
          throw new UsageError(always.length > 0 ? `${always.join(', ')} is always persisted and cannot be removed`
            : `not in the persist list of ${sessionId}: ${unknown.join(', ')} (see perimeter persist ls --session ${sessionId})`);
        }
        state = await persistence.setPatterns(sessionId, current.filter((p) => !patterns.map(normalise).includes(p)));
      }
    }
    process.stdout.write(`${values.json ? JSON.stringify(state) : render(state)}\n`);
    return 0;
  },
};
