// Egress through the whole product path: dev queue -> worker -> bash tool -> QEMU sandbox acquired with the
// session's gateway (companion/runtime.ts wiring) -> the host's own resolver -> an origin on 127.0.0.1.
// Skips (saying why) only when QEMU or the template is absent.
import assert from 'node:assert/strict';
import { loadConfig } from '../../companion/config';
import { EventHub } from '../../companion/events';
import { assembleRuntime } from '../../companion/runtime';
import { findTemplate } from '../../companion/sandbox/template/manifest';
import type { EgressDecision } from '../../companion/protocol/control';
import { setStderrLogging } from '../../companion/log';
import { skipWithoutVms, vmConfig } from '../vm/helpers';
import { scenario, startDevQueue, tmpDir, rmDir } from '../worker/helpers';
import { startHttpFixture } from './helpers/fixtures';

describe('egress through the worker (real VM, real resolver)', function () {
  this.timeout(300_000);
  before(function () { skipWithoutVms(this); });

  it('a bash call reaches an allow-listed host, not another; decisions carry the session id', async () => {
    setStderrLogging(false);
    const origin = await startHttpFixture('worker-origin');
    const dq = await startDevQueue();
    const home = tmpDir('perimeter-egress-home-');
    const template = findTemplate(vmConfig().home)!.dir;
    const config = loadConfig({
      home, concurrency: 1, control: { enabled: false },
      sandbox: { driver: 'qemu', poolSize: 0, template },
      // `localhost` is resolved by the host's resolver (no injected one here); loopback must then be allowed.
      egress: { mode: 'allow', allow: [`localhost:${origin.port}`], allowPrivate: ['127.0.0.0/8', '::1/128'] },
    }, {});
    const hub = new EventHub();
    const decisions: EgressDecision[] = [];
    hub.subscribe((e) => { if (e.type === 'egress.decision') decisions.push(e.decision); });
    const runtime = await assembleRuntime({ config, hub, environmentId: dq.environmentId, environmentKey: dq.environmentKey, baseUrl: dq.baseUrl, control: false, maxIdleMs: 800 });
    assert.equal(runtime.selection.driver.kind, 'qemu');
    const running = runtime.run();
    try {
      const sid = dq.createSession(scenario([
        { tool: 'bash', input: { command: `curl -sS --max-time 30 http://localhost:${origin.port}/from-the-sandbox` }, expectIncludes: ['worker-origin host=localhost'] },
        { tool: 'bash', input: { command: `curl -sS --max-time 30 http://elsewhere.test:${origin.port}/; echo "exit=$?"` }, expectIncludes: ['Could not resolve host', 'exit=6'] },
      ]));
      await dq.waitFor(() => dq.report(sid).finished, 240_000, 'scenario');
      const failed = dq.report(sid).steps.filter((s) => s.status !== 'passed');
      assert.deepEqual(failed.map((s) => `${s.label}: ${s.reason} ${s.text}`), []);
      assert.deepEqual(origin.requests.map((r) => r.url), ['/from-the-sandbox']);
      const allowed = decisions.find((d) => d.kind === 'http' && d.allowed);
      assert.ok(allowed, JSON.stringify(decisions));
      assert.equal(allowed.host, 'localhost');
      assert.equal(allowed.address, '127.0.0.1');
      assert.equal(allowed.sessionId, sid);
      assert.ok(decisions.some((d) => d.kind === 'dns' && !d.allowed && d.host === 'elsewhere.test'));
    } finally {
      await runtime.worker.drain();
      await running;
      await dq.close();
      await origin.close();
      rmDir(home);
      setStderrLogging(true);
    }
  });
});
