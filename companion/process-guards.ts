// Process-wide guards of the companion CLI, installed once by cli.ts before a command runs. Invariants:
// - A broken stdout or stderr (its reader went away: EPIPE, or the stream was destroyed) never ends the process:
//   stderr logging is switched off and stdout output is dropped. A worker whose launcher exited keeps serving.
// - An uncaught exception or unhandled rejection is logged (redacted, like every log line) and the process exits
//   with EXIT_CRASHED, so whoever supervises it (the extension, systemd) restarts it; the journal answers or
//   interrupts the calls it left behind. Leftover VMs go with the 'exit' hook of the drivers.
import { logger, setStderrLogging } from './log';

/** Exit status after an uncaught exception or unhandled rejection (EX_SOFTWARE). */
export const EXIT_CRASHED = 70;

let installed = false;

export function installProcessGuards(): void {
  if (installed) return;
  installed = true;
  process.stdout.on('error', () => { /* nobody reads our output any more: drop it */ });
  process.stderr.on('error', () => setStderrLogging(false));
  const log = logger('process');
  const crash = (what: string, err: unknown) => {
    try { log.error(`${what}; exiting with status ${EXIT_CRASHED}:`, err); } catch { /* no log sink works */ }
    process.exit(EXIT_CRASHED);
  };
  process.on('uncaughtException', (err) => crash('uncaught exception', err));
  process.on('unhandledRejection', (reason) => crash('unhandled promise rejection', reason));
}
