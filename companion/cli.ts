// Entry point of the `perimeter` companion CLI (bundled to dist/perimeter.js). Dispatches `perimeter <command> ...`
// to the modules in COMMANDS; adding a command is one import and one entry there. Exit codes: the command's own,
// 2 for usage errors, 1 for fatal errors (printed as one line, never with a secret: messages pass through redact),
// 70 after an uncaught exception or unhandled rejection (process-guards.ts).
import type { Command } from './commands/types';
import { UsageError } from './commands/options';
import { workerCommand } from './commands/run-worker';
import { devQueueCommand } from './commands/dev-queue';
import { demoCommand } from './commands/demo';
import { doctorCommand } from './commands/doctor';
import { templateCommand } from './commands/template';
import { persistCommand } from './commands/persist';
import { serviceCommand } from './commands/service';
import { environmentCommand } from './commands/environment';
import { loadConfig } from './config';
import { PerimeterError } from './errors';
import { redact } from './log';
import { installProcessGuards } from './process-guards';
import { VERSION } from './version';

/** `perimeter template` keeps its own argument parser; the wrapper only takes `--home DIR` off the front. */
const templateEntry: Command = {
  name: 'template',
  summary: 'build, list, inspect, check or remove microVM templates (kernel, root filesystem, guest agent, snapshot)',
  run: async (argv) => {
    const rest = [...argv];
    let home: string | undefined;
    const i = rest.findIndex((a) => a === '--home' || a.startsWith('--home='));
    if (i >= 0) { home = rest[i]!.includes('=') ? rest[i]!.slice(7) : rest[i + 1]; rest.splice(i, rest[i]!.includes('=') ? 1 : 2); }
    return templateCommand(rest, loadConfig({ home }));
  },
};

// ---- the command registry: one line per command ----
export const COMMANDS: Command[] = [
  workerCommand,
  devQueueCommand,
  demoCommand,
  doctorCommand,
  templateEntry,
  persistCommand,
  serviceCommand,
  environmentCommand,
];

function help(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  return [
    `perimeter ${VERSION}: run Claude Managed Agents' tool calls in microVMs on your own host`,
    '',
    'usage: perimeter <command> [options]     (perimeter <command> --help for its options)',
    '',
    'commands:',
    ...COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
  ].join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') { process.stdout.write(`${help()}\n`); return name ? 0 : 2; }
  if (name === '--version' || name === 'version') { process.stdout.write(`${VERSION}\n`); return 0; }
  const cmd = COMMANDS.find((c) => c.name === name);
  if (!cmd) { process.stderr.write(`perimeter: unknown command "${name}"\n\n${help()}\n`); return 2; }
  try {
    return await cmd.run(rest);
  } catch (err) {
    if (err instanceof UsageError) { process.stderr.write(`perimeter ${name}: ${err.message} (see perimeter ${name} --help)\n`); return 2; }
    const msg = err instanceof PerimeterError ? err.message : (err as Error)?.stack ?? String(err);
    process.stderr.write(`perimeter ${name}: ${redact(msg)}\n`);
    return 1;
  }
}

if (require.main === module) {
  installProcessGuards();
  void main(process.argv.slice(2)).then((code) => process.exit(code));
}
