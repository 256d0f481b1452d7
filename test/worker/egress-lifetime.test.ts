// A session's egress gateway lives as long as the session is served: the runtime (companion/runtime.ts)
// makes it for the session's first sandbox, closes it when the session's work item ends (a gateway of an ended
// session refuses new connections), and closes any left at shutdown. Real gateways, process driver, dev queue.
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { loadConfig } from '../../companion/config';
import { EventHub } from '../../companion/events';
import { assembleRuntime } from '../../companion/runtime';
import { createEgressGateway, type EgressGateway } from '../../companion/egress/proxy';
import type { EgressDecision } from '../../companion/protocol/control';
import { setStderrLogging } from '../../companion/log';
import { rmDir, scenario, startDevQueue, tmpDir } from './helpers';

describe('egress gateways follow the sessions (worker runtime)', () => {
  it('a session\'s gateway is made for its calls, closed when the session ends, and the rest at shutdown', async () => {
    setStderrLogging(process.env.PERIMETER_TEST_LOGS === '1');
    const dq = await startDevQueue();
    const home = tmpDir('perimeter-egress-lifetime-');
    const config = loadConfig({
      home, concurrency: 2, control: { enabled: false },
      sandbox: { driver: 'process', mode: 'per-call' },
      egress: { mode: 'allow', allow: ['example.com'] },
    }, {});
    const hub = new EventHub();
    const refused: EgressDecision[] = [];
    hub.subscribe((e) => { if (e.type === 'egress.decision' && e.decision.reason === 'gateway_closed') refused.push(e.decision); });
    const made: { sessionId: string; gateway: EgressGateway; closed: boolean }[] = [];
    const runtime = await assembleRuntime({
      config, hub, environmentId: dq.environmentId, environmentKey: dq.environmentKey, baseUrl: dq.baseUrl, control: false, maxIdleMs: 800,
      createEgressGateway: (opts) => {
        const gateway = createEgressGateway(opts);
        const record = { sessionId: opts.sessionId ?? '', gateway, closed: false };
        const close = gateway.close.bind(gateway);
        gateway.close = () => { record.closed = true; close(); };
        made.push(record);
        return gateway;
      },
    });
    const running = runtime.run();
    try {
      const sid = dq.createSession(scenario([
        { tool: 'bash', input: { command: 'echo one' }, expectIncludes: ['one'] },
        { tool: 'bash', input: { command: 'echo two' }, expectIncludes: ['two'] },
      ]));
      await dq.waitFor(() => dq.report(sid).finished, 60_000, 'the scenario');
      assert.deepEqual(dq.report(sid).steps.map((s) => s.status), ['passed', 'passed']);
      assert.deepEqual(made.map((m) => m.sessionId), [sid], 'one gateway for the session, shared by its calls');
      await dq.waitFor(() => runtime.journal.getSession(sid)?.state === 'ended', 30_000, 'the session to end');
      assert.equal(made[0]!.closed, true, 'the gateway is closed when the session ends');
      assert.deepEqual(runtime.egress!.sessions, []);
      // A connection reaching the ended session's gateway is refused, and says why.
      const stream = new PassThrough();
      made[0]!.gateway.onConnection(stream, 443);
      assert.equal(stream.destroyed, true);
      assert.deepEqual(refused.map((d) => d.sessionId), [sid]);

      // A gateway still open when the companion stops is closed by the shutdown.
      runtime.egress!.for('sesn_still_open');
      assert.deepEqual(runtime.egress!.sessions, ['sesn_still_open']);
    } finally {
      await runtime.worker.drain();
      await running;
      await dq.close();
      rmDir(home);
      setStderrLogging(true);
    }
    assert.deepEqual(made.map((m) => [m.sessionId, m.closed]), [[made[0]!.sessionId, true], ['sesn_still_open', true]]);
    assert.deepEqual(runtime.egress!.sessions, []);
  });
});
