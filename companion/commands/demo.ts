// `perimeter demo` (what `npm run demo` runs after building): starts the embedded dev queue with the bundled scenario
// (or --scenario FILE), runs the worker in-process against it, and prints one row per call: tool, whether it was
// answered as the scenario expects, the sandbox time and the end-to-end time. Sandbox: microVMs whenever a VM driver
// can run; with `auto` on a host where none can (a fresh machine), and only because the control plane is its own
// embedded queue, the demo uses the process driver (no isolation) and says so in one line with how to get VMs.
// `--json` prints {scenario, driver, mode, ok, noVm?, calls:[{label, tool, ok, ms, callMs, isError, reason}]}. Exit
// code 0 only when every call passed.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { DevQueue } from '../devqueue/server';
import { loadScenario, parseScenario } from '../devqueue/scenario';
import demoScenario from '../devqueue/scenarios/demo.json';
import { assembleRuntime } from '../runtime';
import { agentBinary } from '../sandbox/template/build';
import { setStderrLogging } from '../log';
import { CONFIG_FLAGS, configFromFlags, parse } from './options';
import type { Command } from './types';

const USAGE = 'usage: perimeter demo [--scenario FILE] [--json] [--driver auto|qemu|firecracker|process] [--mode per-call|per-session] [--home DIR] [--metrics HOST:PORT] [--verbose]';
const SCENARIO_TIMEOUT_MS = 15 * 60_000;

export interface DemoRow { label: string; tool: string; ok: boolean; ms: number | null; callMs: number | null; isError: boolean | null; reason: string | null }

export const demoCommand: Command = {
  name: 'demo',
  summary: 'play the bundled scenario against the embedded dev queue and print a table of calls',
  async run(argv) {
    const { values } = parse(argv, { ...CONFIG_FLAGS, scenario: { type: 'string' }, json: { type: 'boolean' }, verbose: { type: 'boolean', short: 'v' }, metrics: { type: 'string' } });
    if (values.help) { process.stdout.write(`${USAGE}\n`); return 0; }
    const scenario = values.scenario ? loadScenario(values.scenario) : parseScenario(demoScenario, 'the bundled demo scenario');
    const config = configFromFlags(values, { control: { enabled: false }, ...(values.metrics ? { metrics: { enabled: true, listen: values.metrics } } : {}) });
    if (!values.verbose && !values['log-level']) setStderrLogging(false);
    const dq = new DevQueue({ unansweredWaitMs: 1500 });
    const baseUrl = await dq.start();
    const runtime = await assembleRuntime({ config, environmentId: dq.environmentId, environmentKey: dq.environmentKey, baseUrl, control: false, maxIdleMs: 1000, whenNoVm: 'process' });
    const driver = runtime.selection.driver.kind;
    const noVm = runtime.selection.noVm;
    const out = (l: string) => process.stdout.write(`${l}\n`);
    const isolationLine = noVm
      ? `no VM isolation available (${noVm.reason}): these calls run as host processes (process driver, no isolation). For microVMs: ${withThisCli(noVm.fix)}; then the demo uses them automatically`
      : driver === 'process' ? 'sandbox driver "process" as asked: NO ISOLATION, these calls run as host processes' : null;
    if (!values.json) {
      out(`perimeter demo: scenario "${scenario.name}" (${scenario.steps.length} calls), sandbox driver ${driver} (${runtime.selection.probe.accel}), mode ${config.sandbox.mode}`);
      if (isolationLine) out(isolationLine);
    } else if (isolationLine) process.stderr.write(`${isolationLine}\n`);
    const running = runtime.run();
    const sessionId = dq.createSession(scenario);
    let timedOut = false;
    try {
      await dq.waitFor(() => dq.report(sessionId).finished, SCENARIO_TIMEOUT_MS, 'the scenario to finish');
      await dq.waitFor(() => dq.workItems().every((w) => w.state === 'stopped'), 15_000, 'the work item to be released').catch(() => {});
    } catch { timedOut = true; }
    await runtime.worker.drain();
    await running;
    await dq.close();
    const rows: DemoRow[] = dq.report(sessionId).steps.map((s) => {
      const call = s.toolUseId ? runtime.journal.getCall(s.toolUseId) : undefined;
      return { label: s.label, tool: s.tool, ok: s.status === 'passed', ms: s.ms, callMs: call?.durationMs ?? null, isError: s.isError, reason: s.reason ?? (s.status === 'passed' ? null : `step ${s.status}`) };
    });
    const ok = !timedOut && rows.every((r) => r.ok);
    if (values.json) {
      out(JSON.stringify({ scenario: scenario.name, driver, accel: runtime.selection.probe.accel, mode: config.sandbox.mode, ok, ...(noVm ? { noVm } : {}), calls: rows }, null, 2));
    } else {
      out(table(rows));
      out(`${rows.filter((r) => r.ok).length}/${rows.length} calls answered as expected${timedOut ? ' (the scenario did not finish in time)' : ''}`);
    }
    return ok ? 0 : 1;
  },
};

/**
 * A fix as the user can type it here: `perimeter …` becomes the command that runs this CLI (e.g. node
 * dist/perimeter.js), and a template build is preceded by `npm run build` when the guest agent it needs was not built
 * (a machine without a C compiler when `npm run demo` built the bundles).
 */
function withThisCli(fix: string): string {
  const script = process.argv[1];
  if (!script) return fix;
  const rel = path.relative(process.cwd(), script);
  const cli = `node ${rel && !rel.startsWith('..') ? rel : script}`;
  let agentBuilt: boolean;
  try { agentBuilt = existsSync(agentBinary()); } catch { agentBuilt = false; }
  return fix.replace(/\bperimeter (?=template|doctor)/g, `${cli} `)
    .replace(`${cli} template build`, agentBuilt ? `${cli} template build` : `npm run build && ${cli} template build`);
}

function table(rows: DemoRow[]): string {
  const head = ['#', 'call', 'tool', 'result', 'sandbox ms', 'total ms', 'note'];
  const body = rows.map((r, i) => [
    String(i + 1), r.label, r.tool, r.ok ? 'ok' : 'FAILED', r.callMs === null ? '-' : String(r.callMs), r.ms === null ? '-' : String(r.ms),
    r.ok ? (r.isError ? 'error result, as expected' : r.isError === null ? (r.reason ?? '') : '') : (r.reason ?? ''),
  ]);
  const widths = head.map((h, c) => Math.max(h.length, ...body.map((b) => Math.min(b[c]!.length, c === 6 ? 60 : 40))));
  const fmt = (cells: string[]) => cells.map((x, c) => (x.length > widths[c]! ? `${x.slice(0, widths[c]! - 1)}…` : x.padEnd(widths[c]!))).join('  ').trimEnd();
  return [fmt(head), fmt(widths.map((w) => '-'.repeat(w))), ...body.map(fmt)].join('\n');
}
