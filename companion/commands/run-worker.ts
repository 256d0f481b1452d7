// `perimeter worker`: serves a self_hosted environment's work queue until SIGTERM/SIGINT (drain: in-flight calls
// finish or are answered with an error, items are released; a second signal exits at once). With `--local` it
// starts the embedded dev queue in-process, plays a scenario (default: the bundled demo) and serves it: no account
// needed. Also starts the control API server (127.0.0.1, token in <home>/control.json) unless --no-control.
// It refuses to start when no microVM sandbox can run (sandbox/select.ts says why and how to fix it); the `process`
// driver (no isolation) runs only when named, and serves a remote control plane only with --allow-no-isolation.
import { loadEnvironmentKey, refuseApiKey, SECRET_ENV_NAMES } from '../queue/credentials';
import { readLaunch } from '../config';
import { scrubEnviron } from '../queue/environ';
import { assembleRuntime } from '../runtime';
import { DevQueue } from '../devqueue/server';
import { loadScenario, parseScenario } from '../devqueue/scenario';
import demoScenario from '../devqueue/scenarios/demo.json';
import { logger } from '../log';
import { logToJournal } from '../service/journald';
import { CONFIG_FLAGS, ENVIRONMENT_FLAGS, configFromFlags, intFlag, parse, requireValue } from './options';
import type { Command } from './types';

const log = logger('cli');

const USAGE = `usage: perimeter worker [--environment-id ID] [--key-file FILE | --key-stdin] [--base-url URL]
                        [--home DIR] [--concurrency N] [--driver auto|qemu|firecracker|process]
                        [--mode per-call|per-session] [--max-idle-ms MS] [--drain-timeout-ms MS] [--no-control]
                        [--allow-no-isolation] [--launch FILE] [--metrics HOST:PORT]
       perimeter worker --local [--scenario FILE] [...]
The environment key comes from --key-file (mode 0600), --key-stdin or ANTHROPIC_ENVIRONMENT_KEY.
--launch FILE: a launcher's launch file (companion/protocol/launch.ts: queue, concurrency, log level, driver,
persist list, egress allow-list); flags override it.
Under systemd the key is the credential environment-key ($CREDENTIALS_DIRECTORY; perimeter service install).
--metrics HOST:PORT serves /metrics (Prometheus) and /healthz there (or set metrics.enabled; default 127.0.0.1:9464).
ANTHROPIC_API_KEY must not be set.
--driver auto (the default) uses a microVM driver or refuses to start. --driver process has NO isolation and serves
only the embedded dev queue or one on loopback, unless --allow-no-isolation is also given.`;

export const workerCommand: Command = {
  name: 'worker',
  summary: 'serve a self_hosted environment (or, with --local, the embedded dev queue)',
  async run(argv) {
    const { values } = parse(argv, {
      ...CONFIG_FLAGS,
      ...ENVIRONMENT_FLAGS,
      'base-url': { type: 'string' },
      'max-idle-ms': { type: 'string' },
      'drain-timeout-ms': { type: 'string' },
      'worker-id': { type: 'string' },
      'no-control': { type: 'boolean' },
      'allow-no-isolation': { type: 'boolean' },
      local: { type: 'boolean' },
      scenario: { type: 'string' },
      launch: { type: 'string' },
      metrics: { type: 'string' },
    });
    if (values.help) { process.stdout.write(`${USAGE}\n`); return 0; }
    const journal = logToJournal();
    if (journal) log.debug(`logging to journald (${journal === 'native' ? 'native protocol, with fields' : 'priority-prefixed stderr'})`);
    refuseApiKey();
    const launch = values.launch ? readLaunch(values.launch) : undefined;
    const config = configFromFlags(values, {
      environmentId: values['environment-id'], baseUrl: values['base-url'], workerId: values['worker-id'],
      ...(values['no-control'] ? { control: { enabled: false } } : {}),
      ...(values.metrics ? { metrics: { enabled: true, listen: values.metrics } } : {}),
    }, launch);
    const launchedLocal = launch?.queue.kind === 'local' ? launch.queue : null;
    let devQueue: DevQueue | null = null;
    let environmentId: string;
    let environmentKey: string;
    let baseUrl = config.baseUrl;
    if (values.local || launchedLocal) {
      const scenarioFile = values.scenario ?? launchedLocal?.scenario;
      const scenario = scenarioFile ? loadScenario(scenarioFile) : parseScenario(demoScenario, 'the bundled demo scenario');
      devQueue = new DevQueue();
      baseUrl = await devQueue.start();
      environmentId = devQueue.environmentId;
      environmentKey = devQueue.environmentKey;
      const sessionId = devQueue.createSession(scenario);
      log.info(`local mode: dev queue at ${baseUrl}, environment ${environmentId}, session ${sessionId} plays scenario "${scenario.name}"`);
      void devQueue.waitFor(() => devQueue!.report(sessionId).finished, 24 * 3600_000, 'scenario').then(() => {
        const steps = devQueue!.report(sessionId).steps;
        const passed = steps.filter((s) => s.status === 'passed').length;
        log.info(`scenario "${scenario.name}" finished: ${passed}/${steps.length} steps passed`);
      }).catch(() => {});
    } else {
      environmentId = requireValue(config.environmentId, 'no environment id: pass --environment-id or set ANTHROPIC_ENVIRONMENT_ID');
      environmentKey = await loadEnvironmentKey({ keyFile: values['key-file'], keyStdin: values['key-stdin'] });
    }
    scrubEnviron(SECRET_ENV_NAMES);
    const maxIdleMs = intFlag('max-idle-ms', values['max-idle-ms']);
    const drainTimeoutMs = intFlag('drain-timeout-ms', values['drain-timeout-ms']);
    const runtime = await assembleRuntime({ config, environmentId, environmentKey, baseUrl, maxIdleMs, drainTimeoutMs, localQueue: devQueue !== null });
    let signals = 0;
    const onSignal = (sig: NodeJS.Signals) => {
      signals++;
      if (signals > 1) { log.warn(`${sig} again: exiting now (recovery happens on the next start)`); process.exit(130); }
      log.info(`${sig}: draining (in-flight calls finish or are answered with an error; send again to exit at once)`);
      void runtime.worker.drain();
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
    try {
      return await runtime.run();
    } finally {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
      await devQueue?.close();
    }
  },
};
