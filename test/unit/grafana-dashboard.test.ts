// The Grafana dashboard in the repository (companion/service/grafana-dashboard.json) queries only metrics the
// companion exposes (its registry, histograms as _bucket/_sum/_count), and every query is valid PromQL (checked by
// Prometheus's promtool as recording rules, Grafana's variables replaced by values).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { EventHub } from '../../companion/events';
import { CompanionMetrics } from '../../companion/service/metrics';

const DASHBOARD = path.resolve(__dirname, '../../companion/service/grafana-dashboard.json');

const Dashboard = z.object({
  title: z.string(),
  uid: z.string(),
  panels: z.array(z.object({ title: z.string(), type: z.string(), targets: z.array(z.object({ expr: z.string().min(1) })).min(1) })).min(1),
  templating: z.object({ list: z.array(z.object({ name: z.string(), definition: z.string().optional() })) }),
});

/** Series names the companion can expose. */
function exposedSeries(): Set<string> {
  const metrics = new CompanionMetrics({
    hub: new EventHub(), minFreeDiskBytes: 0,
    status: () => ({ workerState: 'polling', sessionsActive: 0, journalHealthy: true, stateDir: os.tmpdir(), sandbox: { driver: 'qemu', template: 't', running: 0, pooled: 0, problem: null } }),
  });
  const out = new Set<string>();
  for (const m of (metrics.registry as unknown as { getMetricsAsArray(): Array<{ name: string; type: string }> }).getMetricsAsArray()) {
    out.add(m.name);
    if (m.type === 'histogram') for (const s of ['_bucket', '_sum', '_count']) out.add(`${m.name}${s}`);
  }
  metrics.close();
  return out;
}

const FUNCTIONS = new Set(['sum', 'min', 'max', 'avg', 'count', 'rate', 'increase', 'histogram_quantile', 'by', 'without', 'label_values', 'on', 'ignoring', 'and', 'or', 'unless']);

/** Metric names a PromQL expression (or a Grafana label_values() query) reads. */
function metricsIn(expr: string): string[] {
  const names = new Set<string>();
  const unlabelled = expr.replace(/\{[^}]*\}/g, '{}').replace(/\[[^\]]*\]/g, '[]').replace(/"[^"]*"/g, '""').replace(/\bby \([^)]*\)/g, '').replace(/label_values\(([^,)]+),[^)]*\)/g, 'label_values($1)');
  for (const m of unlabelled.matchAll(/[A-Za-z_:][A-Za-z0-9_:]*/g)) {
    const word = m[0];
    const before = unlabelled[m.index! - 1];
    if (FUNCTIONS.has(word) || before === '$') continue;
    if (unlabelled[m.index! + word.length] === '(') continue; // a function call
    names.add(word);
  }
  return [...names];
}

function queries(d: z.infer<typeof Dashboard>): string[] {
  return [...d.panels.flatMap((p) => p.targets.map((t) => t.expr)), ...d.templating.list.flatMap((v) => (v.definition ? [v.definition] : []))];
}

describe('the Grafana dashboard', () => {
  const dashboard = Dashboard.parse(JSON.parse(readFileSync(DASHBOARD, 'utf8')));

  it('queries only metrics the companion exposes', () => {
    const exposed = exposedSeries();
    const used = new Set(queries(dashboard).flatMap(metricsIn));
    assert.ok(used.size >= 12, `the dashboard reads ${used.size} metrics`);
    assert.deepEqual([...used].filter((m) => !exposed.has(m)).sort(), []);
    for (const wanted of ['perimeter_tool_calls_total', 'perimeter_tool_call_phase_seconds_bucket', 'perimeter_vms', 'perimeter_queue_errors_total', 'perimeter_egress_decisions_total', 'perimeter_healthy']) {
      assert.ok(used.has(wanted), `a panel shows ${wanted}`);
    }
  });

  it('the check catches a metric the companion does not expose', () => {
    assert.deepEqual(metricsIn('sum by (tool) (rate(perimeter_tool_call_total{instance=~"$instance"}[$__rate_interval]))'), ['perimeter_tool_call_total']);
    assert.equal(exposedSeries().has('perimeter_tool_call_total'), false);
  });

  it('every query is valid PromQL (promtool)', function () {
    if (spawnSync('promtool', ['--version']).status !== 0) { console.log('      SKIPPED: promtool is missing (apt-get install prometheus)'); this.skip(); }
    const dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-dashboard-'));
    try {
      const exprs = dashboard.panels.flatMap((p) => p.targets.map((t) => t.expr.replace(/\$__rate_interval/g, '5m').replace(/\$instance/g, '.+')));
      const rules = ['groups:', '  - name: dashboard', '    rules:', ...exprs.flatMap((e, i) => [`      - record: dashboard:query${i}`, `        expr: ${JSON.stringify(e)}`])].join('\n');
      const file = path.join(dir, 'rules.yml');
      writeFileSync(file, `${rules}\n`);
      const r = spawnSync('promtool', ['check', 'rules', file], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stdout + r.stderr);
      assert.match(r.stdout, new RegExp(`SUCCESS: ${exprs.length} rules found`));
    } finally { rmSync(dir, { recursive: true, force: true }); }
  });
});
