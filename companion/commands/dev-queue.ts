// `perimeter dev-queue`: runs the embedded control plane on 127.0.0.1 and plays a scenario, for pointing any worker
// (ours, the ant CLI, an SDK script) at it. Prints the base URL, the environment id and a dev environment key (a
// local-only credential, printed on purpose), then each step's outcome as the session progresses.
import { DevQueue } from '../devqueue/server';
import { loadScenario, parseScenario } from '../devqueue/scenario';
import demoScenario from '../devqueue/scenarios/demo.json';
import { intFlag, parse } from './options';
import type { Command } from './types';

const USAGE = 'usage: perimeter dev-queue [--scenario FILE] [--port N] [--sessions N] [--lease-ttl SECONDS]';

export const devQueueCommand: Command = {
  name: 'dev-queue',
  summary: 'run the embedded control plane (same HTTP + SSE protocol as Anthropic) with a scripted agent',
  async run(argv) {
    const { values } = parse(argv, {
      scenario: { type: 'string' }, port: { type: 'string' }, sessions: { type: 'string' }, 'lease-ttl': { type: 'string' }, help: { type: 'boolean', short: 'h' },
    });
    if (values.help) { process.stdout.write(`${USAGE}\n`); return 0; }
    const scenario = values.scenario ? loadScenario(values.scenario) : parseScenario(demoScenario, 'the bundled demo scenario');
    const dq = new DevQueue({ port: intFlag('port', values.port) ?? 0, leaseTtlSeconds: intFlag('lease-ttl', values['lease-ttl']) });
    const baseUrl = await dq.start();
    const out = (l: string) => process.stdout.write(`${l}\n`);
    out(`base URL:        ${baseUrl}`);
    out(`environment id:  ${dq.environmentId}`);
    out(`environment key: ${dq.environmentKey}   (dev queue only)`);
    const count = intFlag('sessions', values.sessions) ?? 1;
    const ids = Array.from({ length: Math.max(1, count) }, () => dq.createSession(scenario));
    out(`sessions:        ${ids.join(' ')}`);
    out(`try: ANTHROPIC_ENVIRONMENT_KEY=<key> perimeter worker --base-url ${baseUrl} --environment-id ${dq.environmentId}`);
    const seen = new Set<string>();
    const report = () => {
      for (const id of ids) for (const st of dq.report(id).steps) {
        const key = `${id}:${st.index}`;
        if (seen.has(key) || (st.status !== 'passed' && st.status !== 'failed')) continue;
        seen.add(key);
        out(`${id} step ${st.index + 1} ${st.label}: ${st.status}${st.reason ? ` (${st.reason})` : ''}`);
      }
    };
    const timer = setInterval(report, 250);
    await new Promise<void>((resolve) => { process.once('SIGINT', resolve); process.once('SIGTERM', resolve); });
    clearInterval(timer);
    report();
    await dq.close();
    return 0;
  },
};
