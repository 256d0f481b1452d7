// The built CLI (dist/perimeter.js) as a real child process: crash recovery after SIGKILL (mid-call, and after the
// result was journaled but before it was posted), SIGTERM drain, key hygiene in logs, and refusal to run next to an
// organisation API key.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, writeFileSync, chmodSync } from 'node:fs';
import path from 'node:path';
import type { DevQueue } from '../../companion/devqueue/server';
import { answeredOnce, killAll, rmDir, runCli, scenario, startDevQueue, tmpDir, workerArgs, type Child } from './helpers';

function lines(file: string): string[] { return existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter(Boolean) : []; }

describe('worker process: crashes, signals, secrets', () => {
  let dq: DevQueue;
  const dirs: string[] = [];
  const children: Child[] = [];
  const tmp = () => { const d = tmpDir(); dirs.push(d); return d; };
  const start = (home: string, extra: string[] = [], env: Record<string, string> = {}) => {
    const c = runCli(workerArgs(dq, home, extra), { ANTHROPIC_ENVIRONMENT_KEY: dq.environmentKey, ...env });
    children.push(c);
    return c;
  };
  afterEach(async () => {
    await killAll(children);
    await dq?.close();
    for (const d of dirs.splice(0)) rmDir(d);
  });

  it('SIGKILL mid-call, restart: the finished call is not re-run, the interrupted one gets an explicit error, each answered once', async () => {
    dq = await startDevQueue({ leaseTtlSeconds: 2 });
    const m = tmp();
    const home = tmp();
    const sid = dq.createSession(scenario([
      { tool: 'bash', input: { command: `echo x >> ${m}/exec1; echo first` }, expectIncludes: ['first'] },
      { tool: 'bash', input: { command: `echo x >> ${m}/exec2; sleep 30; echo second` }, expectError: true, expectIncludes: ['interrupted: the companion restarted'] },
      { tool: 'bash', input: { command: `echo x >> ${m}/exec3; echo third` }, expectIncludes: ['third'] },
    ]));
    const first = start(home);
    await dq.waitFor(() => existsSync(`${m}/exec2`), 60_000, 'the second call to start');
    first.proc.kill('SIGKILL');
    assert.equal((await first.exit).signal, 'SIGKILL');
    const second = start(home);
    await dq.waitFor(() => dq.report(sid).finished, 90_000, 'the scenario to finish after the restart');
    const rep = dq.report(sid);
    assert.deepEqual(rep.steps.map((s) => s.status), ['passed', 'passed', 'passed'], rep.steps.map((s) => s.reason).join(' | '));
    assert.deepEqual(answeredOnce(dq, rep.steps.map((s) => s.toolUseId!)), { missing: [], duplicated: [] });
    assert.equal(lines(`${m}/exec1`).length, 1, 'the posted call was not run again');
    assert.equal(lines(`${m}/exec2`).length, 1, 'the interrupted call was not re-run');
    assert.equal(lines(`${m}/exec3`).length, 1);
    second.proc.kill('SIGTERM');
    assert.equal((await second.exit).code, 0);
  });

  it('SIGKILL after the result was journaled but before it was posted: the stored result is posted, the tool is not re-run', async () => {
    dq = await startDevQueue({ leaseTtlSeconds: 2 });
    const m = tmp();
    const home = tmp();
    const sid = dq.createSession(scenario([{ tool: 'bash', input: { command: `echo x >> ${m}/exec; echo ran-once` }, expectIncludes: ['ran-once'] }]));
    const first = start(home, [], { PERIMETER_FAULT_KILL_AFTER_RESULT: 'bash' });
    assert.equal((await first.exit).signal, 'SIGKILL', 'the fault hook killed the worker');
    assert.equal(dq.results.size, 0, 'nothing was posted before the crash');
    const second = start(home);
    await dq.waitFor(() => dq.report(sid).finished, 90_000, 'the scenario to finish after the restart');
    assert.equal(dq.report(sid).steps[0]!.status, 'passed');
    assert.equal(lines(`${m}/exec`).length, 1, 'the tool ran exactly once');
    assert.deepEqual(answeredOnce(dq, [dq.report(sid).steps[0]!.toolUseId!]), { missing: [], duplicated: [] });
    second.proc.kill('SIGTERM');
    assert.equal((await second.exit).code, 0);
  });

  it('SIGTERM drains: a running call finishes and is posted, the item is stopped, exit 0; past the deadline a call gets an error', async () => {
    dq = await startDevQueue({ leaseTtlSeconds: 10 });
    const m = tmp();
    const sid = dq.createSession(scenario([{ tool: 'bash', input: { command: `touch ${m}/started; sleep 2; echo finished-in-drain` }, expectIncludes: ['finished-in-drain'] }]));
    const w = start(tmp(), ['--max-idle-ms', '60000']);
    await dq.waitFor(() => existsSync(`${m}/started`), 60_000, 'the call to start');
    w.proc.kill('SIGTERM');
    assert.equal((await w.exit).code, 0);
    assert.equal(dq.report(sid).steps[0]!.status, 'passed', dq.report(sid).steps[0]!.reason ?? '');
    const workId = dq.workItems().find((x) => x.dataId === sid)!.id;
    assert.ok(dq.stops.some((s) => s.workId === workId && s.force), 'the item was force-stopped');

    const sid2 = dq.createSession(scenario([{ tool: 'bash', input: { command: `touch ${m}/started2; sleep 60; echo never` }, expectError: true, expectIncludes: ['shutting down'] }]));
    const w2 = start(tmp(), ['--max-idle-ms', '60000', '--drain-timeout-ms', '1500']);
    await dq.waitFor(() => existsSync(`${m}/started2`), 60_000, 'the long call to start');
    w2.proc.kill('SIGTERM');
    assert.equal((await w2.exit).code, 0);
    assert.equal(dq.report(sid2).steps[0]!.status, 'passed', dq.report(sid2).steps[0]!.reason ?? '');
  });

  it('takes the key on stdin and never writes it or a sessions token to its logs, even at debug level', async () => {
    dq = await startDevQueue();
    const sid = dq.createSession(scenario([{ tool: 'bash', input: { command: 'echo "key=[$ANTHROPIC_ENVIRONMENT_KEY]"' }, expectIncludes: ['key=[]'] }]));
    const w = runCli(workerArgs(dq, tmp(), ['--log-level', 'debug', '--key-stdin']), {}, `${dq.environmentKey}\n`);
    children.push(w);
    await dq.waitFor(() => dq.report(sid).finished, 60_000, 'scenario');
    assert.equal(dq.report(sid).steps[0]!.status, 'passed', 'the sandbox does not see the key');
    w.proc.kill('SIGTERM');
    await w.exit;
    const log = w.stderr() + w.stdout();
    assert.ok(log.length > 1000, 'the worker logged at debug level');
    assert.ok(!log.includes(dq.environmentKey), 'environment key in the logs');
    const item = dq.workItems().find((x) => x.dataId === sid)!;
    const token = (dq as unknown as { work: Map<string, { sessionsToken: string }> }).work.get(item.id)!.sessionsToken;
    assert.ok(!log.includes(token), 'sessions token in the logs');
    assert.ok(!/sk-ant-(?!\[redacted\])[A-Za-z0-9_-]{4,}/.test(log), 'an unredacted sk-ant- value in the logs');
  });

  it('refuses to start with ANTHROPIC_API_KEY set, and with a key file readable by others', async () => {
    dq = await startDevQueue();
    const a = runCli(workerArgs(dq, tmp()), { ANTHROPIC_ENVIRONMENT_KEY: dq.environmentKey, ANTHROPIC_API_KEY: 'sk-ant-api03-canary-canary-canary' });
    assert.equal((await a.exit).code, 1);
    assert.match(a.stderr(), /ANTHROPIC_API_KEY is set/);
    assert.ok(!a.stderr().includes('canary-canary'));
    const keyFile = path.join(tmp(), 'key');
    writeFileSync(keyFile, `${dq.environmentKey}\n`);
    chmodSync(keyFile, 0o644);
    const b = runCli(workerArgs(dq, tmp(), ['--key-file', keyFile]));
    assert.equal((await b.exit).code, 1);
    assert.match(b.stderr(), /readable by group or others.*chmod 600/);
    assert.equal(dq.requests.length, 0, 'no request was made');
  });

  it('perimeter demo --json completes the bundled scenario (process driver) with every call ok', async function () {
    this.timeout(180_000);
    const d = runCli(['demo', '--json', '--driver', 'process', '--home', tmp()]);
    const { code } = await d.exit;
    const out = JSON.parse(d.stdout()) as { ok: boolean; driver: string; calls: Array<{ tool: string; ok: boolean; ms: number | null; reason: string | null }> };
    assert.equal(out.driver, 'process');
    assert.deepEqual(out.calls.filter((c) => !c.ok).map((c) => `${c.tool}: ${c.reason}`), []);
    assert.equal(out.ok, true);
    assert.equal(code, 0);
    assert.ok(out.calls.length >= 18 && out.calls.every((c) => typeof c.ms === 'number'));
  });

  it('perimeter doctor --json reports each check with a fix; --help lists the commands; bad flags are usage errors', async () => {
    const home = tmp();
    const d = runCli(['doctor', '--json', '--home', home]);
    await d.exit;
    const r = JSON.parse(d.stdout()) as { ok: boolean; checks: Array<{ name: string; ok: boolean; fix: string | null }> };
    for (const name of ['node', 'kvm', 'qemu', 'template', 'state-dir', 'disk']) assert.ok(r.checks.some((c) => c.name === name), name);
    assert.ok(r.checks.filter((c) => !c.ok).every((c) => c.fix === null || c.fix.length > 0));
    assert.equal(r.checks.find((c) => c.name === 'state-dir')!.ok, true);
    // A template built under TCG because KVM could not boot it: doctor does not call KVM usable, and quotes why.
    const tcgHome = tmp();
    const tdir = path.join(tcgHome, 'templates', '0123456789abcdef');
    mkdirSync(tdir, { recursive: true });
    writeFileSync(path.join(tcgHome, 'templates', 'current'), '0123456789abcdef');
    writeFileSync(path.join(tdir, 'template.json'), JSON.stringify({ version: 1, hash: '0123456789abcdef', createdAt: new Date().toISOString(), kernel: 'tiny', accel: 'tcg', qemuVersion: 'QEMU 7.2', memoryMiB: 256, vcpus: 1, writableMiB: 128, append: '', machineOpts: '', rootfsSource: 'debootstrap', files: {}, bootMs: 1, snapshotMs: 1 }));
    mkdirSync(path.join(tcgHome, 'cache'));
    writeFileSync(path.join(tcgHome, 'cache', 'accel.json'), JSON.stringify({ k: { accel: 'tcg', detail: 'KVM test boot failed (failed to set MSR 0x10a): using TCG (software CPU: for testing only, much slower)' } }));
    const d2 = runCli(['doctor', '--json', '--home', tcgHome]);
    await d2.exit;
    const kvm = (JSON.parse(d2.stdout()) as typeof r).checks.find((c) => c.name === 'kvm')! as { ok: boolean; detail?: string };
    assert.equal(kvm.ok, false, JSON.stringify(kvm));
    assert.match(kvm.detail!, /TCG/);
    if (existsSync('/dev/kvm')) assert.match(kvm.detail!, /failed to set MSR 0x10a|cannot open/);
    const h = runCli(['--help']);
    assert.equal((await h.exit).code, 0);
    for (const c of ['worker', 'dev-queue', 'demo', 'doctor']) assert.match(h.stdout(), new RegExp(`\\n  ${c} `));
    const bad = runCli(['worker', '--concurrency', 'many']);
    assert.equal((await bad.exit).code, 2);
    assert.match(bad.stderr(), /--concurrency must be an integer/);
    const bad2 = runCli(['demo', '--nope']);
    assert.equal((await bad2.exit).code, 2);
  });

  it('a key the service rejects (401) stops polling with exit code 1 and says why', async () => {
    dq = await startDevQueue();
    const w = runCli(workerArgs(dq, tmp()), { ANTHROPIC_ENVIRONMENT_KEY: 'sk-ant-env01-not-the-right-key-000000' });
    children.push(w);
    assert.equal((await w.exit).code, 1);
    assert.match(w.stderr(), /polling stopped: .*401/);
    assert.ok(!w.stderr().includes('not-the-right-key'));
  });

  it('perimeter dev-queue prints its endpoint and serves the unmodified SDK', async () => {
    const d = runCli(['dev-queue', '--lease-ttl', '30']);
    children.push(d);
    const deadline = Date.now() + 30_000;
    while (!/environment key: (\S+)/.test(d.stdout()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    const base = /base URL: +(\S+)/.exec(d.stdout())![1]!;
    const env = /environment id: +(\S+)/.exec(d.stdout())![1]!;
    const key = /environment key: (\S+)/.exec(d.stdout())![1]!;
    const { default: Anthropic } = await import('@anthropic-ai/sdk');
    const c = new Anthropic({ apiKey: null, authToken: key, baseURL: base, maxRetries: 0 });
    const work = await c.beta.environments.work.poll(env, { block_ms: 500 });
    assert.equal(work?.data.type, 'session');
    const session = await c.beta.sessions.retrieve(work!.data.id);
    assert.equal(session.status, 'running');
    d.proc.kill('SIGINT');
    assert.equal((await d.exit).code, 0);
  });
});
