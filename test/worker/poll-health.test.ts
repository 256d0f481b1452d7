// What a worker tells its clients about polling (host facts `poll`), and `perimeter environment check`, against the
// dev queue: polls answered with errors, no route to the API, a refused key; the check's verdict for each, read-only.
import assert from 'node:assert/strict';
import net from 'node:net';
import type { DevQueue } from '../../companion/devqueue/server';
import { assembleRuntime } from '../../companion/runtime';
import { loadConfig } from '../../companion/config';
import { EnvironmentCheck } from '../../companion/protocol/environment';
import type { HostFacts } from '../../companion/protocol/control';
import { rmDir, runCli, startDevQueue, startRuntime, tmpDir } from './helpers';

/** A port on 127.0.0.1 that nothing listens on. */
async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const { port } = srv.address() as net.AddressInfo;
  await new Promise((r) => srv.close(r));
  return port;
}

describe('worker: poll health in the host facts', () => {
  let dq: DevQueue;
  afterEach(async () => { await dq?.close(); });

  it('counts failed polls with the last error and status, and resets once a poll succeeds', async () => {
    dq = await startDevQueue({ faults: { status5xxEvery: 1, routes: ['work.poll'] } });
    const rt = await startRuntime(dq);
    try {
      const seen: HostFacts[] = [];
      rt.runtime.hub.subscribe((e) => { if (e.type === 'host.facts') seen.push(e.facts); });
      await dq.waitFor(() => (seen.at(-1)?.poll?.failures ?? 0) >= 3, 60_000, 'three failed polls');
      const failing = seen.at(-1)!.poll!;
      assert.ok([500, 502, 503, 529].includes(failing.lastStatus!), JSON.stringify(failing));
      assert.match(failing.lastError!, /^(500|502|503|529) injected server error$/);
      assert.deepEqual(seen.at(-1)!.queue, { kind: 'environment', environmentId: dq.environmentId });
      dq.faults = {};
      await dq.waitFor(() => seen.at(-1)?.poll?.failures === 0, 60_000, 'a successful poll');
      assert.equal(seen.at(-1)!.poll!.lastError, null);
      assert.ok(seen.at(-1)!.poll!.lastSuccessAt !== null);
      assert.equal(rt.runtime.worker.state(), 'polling');
    } finally { await rt.stop(); rmDir(rt.home); }
  });

  it('reports polls that get no answer (no route to the API) with the reason and no status', async () => {
    const home = tmpDir('perimeter-home-');
    const config = loadConfig({ home, concurrency: 1, sandbox: { driver: 'process' }, control: { enabled: false } }, {});
    const runtime = await assembleRuntime({ config, environmentId: 'env_x', environmentKey: 'sk-ant-env01-' + 'n'.repeat(30), baseUrl: `http://127.0.0.1:${await closedPort()}`, control: false });
    const running = runtime.run();
    try {
      const seen: HostFacts[] = [];
      runtime.hub.subscribe((e) => { if (e.type === 'host.facts') seen.push(e.facts); });
      await new Promise<void>((resolve) => { const t = setInterval(() => { if ((seen.at(-1)?.poll?.failures ?? 0) >= 2) { clearInterval(t); resolve(); } }, 50); });
      const poll = seen.at(-1)!.poll!;
      assert.equal(poll.lastStatus, null);
      assert.match(poll.lastError!, /ECONNREFUSED/);
      assert.equal(runtime.worker.state(), 'polling', 'the worker keeps trying');
    } finally { await runtime.worker.drain(); await running; rmDir(home); }
  });

  it('stops polling with a refused key and says why in the facts', async () => {
    dq = await startDevQueue();
    const home = tmpDir('perimeter-home-');
    const config = loadConfig({ home, concurrency: 1, sandbox: { driver: 'process' }, control: { enabled: false } }, {});
    const runtime = await assembleRuntime({ config, environmentId: dq.environmentId, environmentKey: 'sk-ant-env01-' + 'w'.repeat(30), baseUrl: dq.baseUrl, control: false });
    try {
      assert.equal(await runtime.run(), 1);
      assert.equal(runtime.worker.state(), 'error');
      const poll = runtime.worker.hostFacts().poll!;
      assert.equal(poll.lastStatus, 401);
      assert.match(poll.lastError!, /^401 invalid credential/);
    } finally { rmDir(home); }
  });
});

describe('perimeter environment check', () => {
  let dq: DevQueue;
  before(async () => { dq = await startDevQueue(); });
  after(async () => { await dq.close(); });

  async function check(environmentId: string, key: string, baseUrl = dq.baseUrl): Promise<{ code: number | null; result: EnvironmentCheck; stderr: string }> {
    const child = runCli(['environment', 'check', '--environment-id', environmentId, '--key-stdin', '--json', '--base-url', baseUrl, '--home', tmpDir()], {}, `${key}\n`);
    const { code } = await child.exit;
    return { code, result: EnvironmentCheck.parse(JSON.parse(child.stdout())), stderr: child.stderr() };
  }

  it('accepts the right ID and key without claiming anything', async () => {
    const polls = dq.requests.filter((r) => r.route === 'work.poll').length;
    const r = await check(dq.environmentId, dq.environmentKey);
    assert.equal(r.code, 0);
    assert.equal(r.result.verdict, 'ok');
    assert.equal(dq.requests.filter((q) => q.route === 'work.poll').length, polls, 'no poll: nothing claimed');
    assert.ok(!JSON.stringify(r.result).includes(dq.environmentKey), 'the key is not in the result');
  });

  it('names a refused key, an unknown environment and an unreachable API', async () => {
    const refused = await check(dq.environmentId, 'sk-ant-env01-' + 'w'.repeat(30));
    assert.deepEqual([refused.code, refused.result.verdict, refused.result.status], [1, 'key_refused', 401]);
    const unknown = await check('env_doesnotexist', dq.environmentKey);
    assert.deepEqual([unknown.code, unknown.result.verdict, unknown.result.status], [1, 'not_found', 404]);
    assert.match(unknown.result.detail, /env_doesnotexist not found/);
    const down = await check(dq.environmentId, dq.environmentKey, `http://127.0.0.1:${await closedPort()}`);
    assert.deepEqual([down.code, down.result.verdict, down.result.status], [1, 'unreachable', null]);
    assert.match(down.result.detail, /ECONNREFUSED/);
  });
});
