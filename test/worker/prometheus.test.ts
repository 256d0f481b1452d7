// A real Prometheus server (Debian's `prometheus`) scrapes the companion's /metrics every second while the built CLI
// plays the bundled demo scenario (`perimeter worker --local --metrics …`, process driver); the test then asks
// Prometheus's HTTP API for the call counter, a latency histogram and the scrape's health.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import demo from '../../companion/devqueue/scenarios/demo.json';
import { CLI, rmDir, tmpDir } from './helpers';

const PROMETHEUS = '/usr/bin/prometheus';

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => { const { port } = srv.address() as net.AddressInfo; srv.close(() => resolve(port)); });
  });
}

async function waitFor<T>(what: string, ms: number, probe: () => Promise<T | null>): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe().catch(() => null);
    if (v !== null) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

/** The calls a companion journaled (the newest state of each, from its journal file). */
function journaledCalls(home: string): Array<{ name: string; state: string; isError: boolean | null; durationMs: number | null }> {
  const calls = new Map<string, { name: string; state: string; isError: boolean | null; durationMs: number | null }>();
  for (const line of readFileSync(path.join(home, 'journal', 'journal.jsonl'), 'utf8').split('\n')) {
    let rec: { k?: string; toolUseId?: string };
    try { rec = JSON.parse(line) as typeof rec; } catch { continue; }
    if (rec.k === 'c' && rec.toolUseId) calls.set(rec.toolUseId, { ...calls.get(rec.toolUseId), ...rec } as never);
  }
  return [...calls.values()];
}

/** One instant query through Prometheus's HTTP API: the value of each series, by its labels. */
async function query(base: string, promql: string): Promise<Array<{ metric: Record<string, string>; value: number }>> {
  const res = await fetch(`${base}/api/v1/query?query=${encodeURIComponent(promql)}`);
  const body = await res.json() as { status: string; data: { result: Array<{ metric: Record<string, string>; value: [number, string] }> } };
  assert.equal(body.status, 'success', JSON.stringify(body));
  return body.data.result.map((r) => ({ metric: r.metric, value: Number(r.value[1]) }));
}

describe('Prometheus scraping the companion during a demo run', function () {
  this.timeout(180_000);
  let dir: string;
  const procs: ChildProcess[] = [];
  before(function () {
    if (spawnSync(PROMETHEUS, ['--version']).status !== 0) { console.log('      SKIPPED: prometheus is missing (apt-get install prometheus)'); this.skip(); }
  });
  beforeEach(() => { dir = tmpDir('perimeter-prom-'); });
  afterEach(async () => {
    for (const p of procs.splice(0)) if (p.exitCode === null && p.signalCode === null) { p.kill('SIGTERM'); await new Promise((r) => p.once('exit', r)); }
    rmDir(dir);
  });

  it('counts every answered call and records call latency histograms that PromQL can query', async () => {
    const [metricsPort, webPort] = [await freePort(), await freePort()];
    const config = path.join(dir, 'prometheus.yml');
    writeFileSync(config, [
      'global:', '  scrape_interval: 1s', '  scrape_timeout: 1s',
      'scrape_configs:', '  - job_name: perimeter', '    static_configs:', `      - targets: ['127.0.0.1:${metricsPort}']`, '',
    ].join('\n'));
    const prom = spawn(PROMETHEUS, [`--config.file=${config}`, `--storage.tsdb.path=${path.join(dir, 'tsdb')}`, `--web.listen-address=127.0.0.1:${webPort}`, '--log.level=warn'], { stdio: ['ignore', 'ignore', 'pipe'] });
    procs.push(prom);
    let promLog = '';
    prom.stderr!.on('data', (d) => { promLog += d; });
    const api = `http://127.0.0.1:${webPort}`;
    await waitFor('prometheus to be ready', 60_000, async () => ((await fetch(`${api}/-/ready`)).ok ? true : null));

    const home = path.join(dir, 'home');
    const worker = spawn(process.execPath, [CLI, 'worker', '--local', '--driver', 'process', '--no-control', '--home', home, '--metrics', `127.0.0.1:${metricsPort}`], {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: dir }, stdio: ['ignore', 'ignore', 'pipe'],
    });
    procs.push(worker);
    let log = '';
    worker.stderr!.on('data', (d) => { log += d; });
    await waitFor('the demo scenario to finish', 120_000, async () => (/scenario "demo" finished/.test(log) ? true : null));
    assert.match(log, new RegExp(`scenario "demo" finished: ${demo.steps.length}/${demo.steps.length} steps passed`));
    // What Prometheus must report: the calls the companion journaled (another client's custom tool never reaches it).
    const calls = journaledCalls(home);
    const answered = calls.length;
    assert.ok(answered >= demo.steps.filter((s) => !('expectUnanswered' in s && s.expectUnanswered)).length, `${answered} calls journaled`);

    const total = await waitFor(`Prometheus to see ${answered} calls`, 60_000, async () => {
      const r = await query(api, 'sum(perimeter_tool_calls_total{job="perimeter"})');
      return r[0]?.value === answered ? r[0].value : null;
    });
    assert.equal(total, answered);
    const byTool = await query(api, 'sum by (tool) (perimeter_tool_calls_total)');
    const expectedByTool: Record<string, number> = {};
    for (const c of calls) expectedByTool[c.name] = (expectedByTool[c.name] ?? 0) + 1;
    assert.deepEqual(Object.fromEntries(byTool.map((r) => [r.metric.tool, r.value])), expectedByTool);
    const errors = await query(api, 'sum(perimeter_tool_calls_total{outcome="error"})');
    assert.equal(errors[0]!.value, calls.filter((c) => c.isError && c.state !== 'denied' && c.state !== 'interrupted').length);
    assert.equal(errors[0]!.value, demo.steps.filter((s) => 'expectError' in s && s.expectError).length);

    const execCount = await query(api, 'sum(perimeter_tool_call_phase_seconds_count{phase="exec"})');
    assert.ok(execCount[0]!.value > 0 && execCount[0]!.value <= answered, `exec phase observed (${execCount[0]?.value})`);
    const p99 = await query(api, 'histogram_quantile(0.99, sum by (le) (perimeter_tool_call_duration_seconds_bucket))');
    assert.ok(Number.isFinite(p99[0]!.value) && p99[0]!.value > 0, `a p99 call latency (${p99[0]?.value} s)`);
    const slowBucket = await query(api, 'sum(perimeter_tool_call_duration_seconds_bucket{le="+Inf"})');
    assert.equal(slowBucket[0]!.value, calls.filter((c) => c.durationMs !== null).length);
    const up = await query(api, 'up{job="perimeter"}');
    assert.equal(up[0]!.value, 1, promLog);
  });
});
