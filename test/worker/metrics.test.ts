// The Prometheus endpoint of a real runtime (process driver) against the dev queue: the counters and histograms the
// calls fed through the hub, the scrape-time gauges, and /healthz turning 503 when the journal cannot be written
// (its file made /dev/full: every write fails with ENOSPC, as on a full disk) or the disk is below the floor.
import assert from 'node:assert/strict';
import { rmSync, symlinkSync } from 'node:fs';
import path from 'node:path';
import type { DevQueue } from '../../companion/devqueue/server';
import { loadConfig } from '../../companion/config';
import { assembleRuntime, type Runtime } from '../../companion/runtime';
import { setStderrLogging } from '../../companion/log';
import { JOURNAL_FILE } from '../../companion/journal/journal';
import { rmDir, scenario, startDevQueue, tmpDir } from './helpers';

/** Samples of a Prometheus text exposition: `name{labels}` -> value. */
export function parseExposition(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^(\S+?(?:\{.*\})?) (\S+)$/.exec(line);
    if (m) out.set(m[1]!, Number(m[2]));
  }
  return out;
}

async function startMetricsRuntime(dq: DevQueue, home: string, metrics: Record<string, unknown> = {}, settings: Record<string, unknown> = {}): Promise<{ runtime: Runtime; running: Promise<number>; base: string }> {
  setStderrLogging(process.env.PERIMETER_TEST_LOGS === '1');
  const config = loadConfig({ home, sandbox: { driver: 'process' }, control: { enabled: false }, metrics: { enabled: true, listen: '127.0.0.1:0', ...metrics }, ...settings }, {});
  const runtime = await assembleRuntime({ config, environmentId: dq.environmentId, environmentKey: dq.environmentKey, baseUrl: dq.baseUrl, control: false, maxIdleMs: 800 });
  const running = runtime.run();
  return { runtime, running, base: `http://${runtime.metricsServer!.address}` };
}

describe('metrics endpoint (process driver)', () => {
  let dq: DevQueue;
  let home: string;
  beforeEach(async () => { dq = await startDevQueue(); home = tmpDir('perimeter-metrics-'); });
  afterEach(async () => { await dq.close(); rmDir(home); });

  it('counts calls by tool and outcome, times their phases, counts polls, and reports healthy while it can claim work', async () => {
    const { runtime, running, base } = await startMetricsRuntime(dq, home);
    try {
      assert.match(runtime.metricsServer!.address, /^127\.0\.0\.1:\d+$/, 'loopback by default');
      const sid = dq.createSession(scenario([
        { tool: 'write', input: { file_path: 'a.txt', content: 'x\n' } },
        { tool: 'read', input: { file_path: 'a.txt' } },
        { tool: 'bash', input: { command: 'echo ok' } },
        { tool: 'bash', input: { command: 'exit 3' }, expectError: true },
      ]));
      await dq.waitFor(() => dq.report(sid).finished, 60_000, 'scenario');
      await dq.waitFor(() => runtime.journal.listCalls(sid, { limit: 10 }).items.every((c) => c.state === 'posted'), 20_000, 'posted');
      const res = await fetch(`${base}/metrics`);
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') ?? '', /^text\/plain/);
      const m = parseExposition(await res.text());
      assert.equal(m.get('perimeter_tool_calls_total{tool="bash",outcome="ok"}'), 1);
      assert.equal(m.get('perimeter_tool_calls_total{tool="bash",outcome="error"}'), 1);
      assert.equal(m.get('perimeter_tool_calls_total{tool="write",outcome="ok"}'), 1);
      assert.equal(m.get('perimeter_tool_calls_total{tool="read",outcome="ok"}'), 1);
      assert.equal(m.get('perimeter_tool_call_results_posted_total{tool="bash"}'), 2);
      assert.equal(m.get('perimeter_tool_call_duration_seconds_count{tool="bash"}'), 2);
      for (const phase of ['restore', 'copy_in', 'exec', 'copy_out']) {
        assert.equal(m.get(`perimeter_tool_call_phase_seconds_count{tool="bash",phase="${phase}"}`), 2, phase);
      }
      assert.ok((m.get('perimeter_queue_polls_total{status="200"}') ?? 0) >= 1, 'the claiming poll is counted');
      assert.equal(m.get('perimeter_sessions_claimed_total'), 1);
      assert.equal(m.get('perimeter_journal_healthy'), 1);
      assert.equal(m.get('perimeter_worker_state{state="polling"}'), 1);
      assert.equal(m.get('perimeter_vms{template="none",state="running"}'), 0);
      assert.ok((m.get('perimeter_state_disk_free_bytes') ?? 0) > 0);
      assert.ok([...m.keys()].some((k) => k.startsWith('perimeter_build_info{version=')));
      const health = await fetch(`${base}/healthz`);
      assert.equal(health.status, 200);
      assert.deepEqual(await health.json(), { ok: true, problems: [] });
    } finally {
      await runtime.worker.drain();
      await running;
    }
  });

  it('/healthz fails with the reason when the journal cannot be written (disk full)', async () => {
    const { runtime, running, base } = await startMetricsRuntime(dq, home);
    try {
      assert.equal((await fetch(`${base}/healthz`)).status, 200);
      const file = path.join(runtime.journal.dir, JOURNAL_FILE);
      runtime.journal.close();
      rmSync(file);
      symlinkSync('/dev/full', file);
      dq.createSession(scenario([{ tool: 'bash', input: { command: 'echo never' } }]));
      await dq.waitFor(() => !runtime.journal.healthy, 30_000, 'the journal to fail');
      const res = await fetch(`${base}/healthz`);
      assert.equal(res.status, 503);
      const body = await res.json() as { ok: boolean; problems: string[] };
      assert.equal(body.ok, false);
      assert.ok(body.problems.some((p) => /journal cannot be written/.test(p)), body.problems.join('; '));
      const m = parseExposition(await (await fetch(`${base}/metrics`)).text());
      assert.equal(m.get('perimeter_journal_healthy'), 0);
      assert.equal(m.get('perimeter_healthy'), 0);
    } finally {
      await runtime.worker.drain();
      await running;
    }
  });

  it('/healthz fails when the state directory\'s filesystem is below the free-space floor', async () => {
    const { runtime, running, base } = await startMetricsRuntime(dq, home, {}, { minFreeMiB: 2 ** 40 });
    try {
      const res = await fetch(`${base}/healthz`);
      assert.equal(res.status, 503);
      const body = await res.json() as { problems: string[] };
      assert.ok(body.problems.some((p) => p.startsWith('low disk:')), body.problems.join('; '));
    } finally {
      await runtime.worker.drain();
      await running;
    }
  });
});
