// The metrics' feed and the health verdict, driven through a real EventHub: egress verdicts, queue errors by operation
// and status (a cancelled request is not one), tool names outside the six folded into `other`; /healthz's verdict for
// each reason the worker cannot claim work (journal, sandbox, disk, worker state).
import assert from 'node:assert/strict';
import os from 'node:os';
import { EventHub } from '../../companion/events';
import { CompanionMetrics, type RuntimeStatus } from '../../companion/service/metrics';

function status(patch: Partial<RuntimeStatus> = {}, sandbox: Partial<RuntimeStatus['sandbox']> = {}): RuntimeStatus {
  return {
    workerState: 'polling', sessionsActive: 2, journalHealthy: true, stateDir: os.tmpdir(),
    sandbox: { driver: 'qemu', template: 'abc', running: 1, pooled: 2, problem: null, ...sandbox }, ...patch,
  };
}

async function samples(m: CompanionMetrics): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const line of (await m.registry.metrics()).split('\n')) {
    const r = /^(perimeter_\S+) (\S+)$/.exec(line);
    if (r) out.set(r[1]!, Number(r[2]));
  }
  return out;
}

describe('companion metrics (fed by the event hub)', () => {
  it('counts egress verdicts and queue errors by their labels; the VMs and sessions gauges read the status', async () => {
    const hub = new EventHub();
    const m = new CompanionMetrics({ hub, status: () => status(), minFreeDiskBytes: 0 });
    const decision = (allowed: boolean, kind: 'tls' | 'dns') => hub.publish({ type: 'egress.decision', decision: { ts: 1, sessionId: 's', host: 'pypi.org', port: 443, kind, allowed, reason: 'x', address: null } });
    decision(true, 'tls'); decision(false, 'tls'); decision(false, 'dns');
    hub.observe({ type: 'queue.request', operation: 'poll', status: 204 });
    hub.observe({ type: 'queue.request', operation: 'poll', status: 429 });
    hub.observe({ type: 'queue.request', operation: 'heartbeat', status: 0 });
    hub.observe({ type: 'queue.request', operation: 'events', status: 200 });
    hub.publish({ type: 'call.finished', call: { toolUseId: 't', sessionId: 's', name: 'deploy', input: {}, state: 'done', startedAt: 1, finishedAt: 2, durationMs: 1, exitCode: 0, isError: false, outputPreview: '' } });
    const s = await samples(m);
    assert.equal(s.get('perimeter_egress_decisions_total{verdict="allowed",kind="tls"}'), 1);
    assert.equal(s.get('perimeter_egress_decisions_total{verdict="denied",kind="tls"}'), 1);
    assert.equal(s.get('perimeter_egress_decisions_total{verdict="denied",kind="dns"}'), 1);
    assert.equal(s.get('perimeter_queue_polls_total{status="204"}'), 1);
    assert.equal(s.get('perimeter_queue_polls_total{status="429"}'), 1);
    assert.equal(s.get('perimeter_queue_errors_total{operation="poll",status="429"}'), 1);
    assert.equal(s.get('perimeter_queue_errors_total{operation="heartbeat",status="0"}'), 1);
    assert.equal([...s.keys()].filter((k) => k.startsWith('perimeter_queue_errors_total')).length, 2, 'a 200 is no error');
    assert.equal(s.get('perimeter_tool_calls_total{tool="other",outcome="ok"}'), 1, 'a name from the model never becomes a label');
    assert.equal(s.get('perimeter_vms{template="abc",state="running"}'), 1);
    assert.equal(s.get('perimeter_vms{template="abc",state="pooled"}'), 2);
    assert.equal(s.get('perimeter_sessions_active'), 2);
    m.close();
    hub.observe({ type: 'queue.request', operation: 'poll', status: 204 });
    assert.equal((await samples(m)).get('perimeter_queue_polls_total{status="204"}'), 1, 'closed: no longer fed');
  });

  it('is healthy only while the worker can claim work, naming each reason it cannot', () => {
    const verdict = (st: RuntimeStatus, minFree = 0) => new CompanionMetrics({ hub: new EventHub(), status: () => st, minFreeDiskBytes: minFree }).health();
    assert.deepEqual(verdict(status()), { ok: true, problems: [] });
    assert.deepEqual(verdict(status({ journalHealthy: false })).problems, ['the journal cannot be written']);
    assert.deepEqual(verdict(status({}, { problem: 'remaking the template snapshot failed' })).problems, ['the sandbox cannot give VMs: remaking the template snapshot failed']);
    assert.deepEqual(verdict(status({ workerState: 'draining' })).problems, ['the worker is draining, not polling']);
    assert.match(verdict(status(), Number.MAX_SAFE_INTEGER).problems[0]!, /^low disk: \d+ MiB free for .*, below \d+ MiB$/);
    assert.match(verdict(status({ stateDir: '/nonexistent/perimeter' })).problems[0]!, /cannot be read/);
  });
});
