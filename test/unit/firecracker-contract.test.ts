// Contract tests of the Firecracker driver. Firecracker cannot run here (no working KVM), so a fake API server
// (test/vm/fixtures/fake-firecracker.mjs) records every request while the driver builds its snapshot and restores
// sandboxes; each recorded request is then checked against Firecracker's published swagger spec
// (fixtures/firecracker/firecracker.yaml, kept in the repository with its licence and source commit, so this suite
// runs on every clone and fails when the spec is missing): the path and method exist, and the JSON body satisfies the
// body schema (types, required fields, enums, bounds, no unknown fields — Firecracker rejects unknown fields).
// The guest side is the real agent binary in host test mode, reached through the vsock CONNECT handshake.
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse } from 'yaml';
import { loadConfig } from '../../companion/config';
import { FirecrackerDriver, jailerArgs } from '../../companion/sandbox/firecracker/driver';
import { FirecrackerApi } from '../../companion/sandbox/firecracker/api';

const SPEC = path.resolve(__dirname, 'fixtures/firecracker/firecracker.yaml');
const AGENT = path.resolve(__dirname, '../../dist/guest/perimeter-agent');
const FAKE = path.resolve(__dirname, '../vm/fixtures/fake-firecracker.mjs');

type Schema = { $ref?: string; type?: string; required?: string[]; properties?: Record<string, Schema>; enum?: unknown[]; minimum?: number; maximum?: number; items?: Schema };
interface Spec { paths: Record<string, Record<string, { parameters?: { in: string; schema?: Schema }[] }>>; definitions: Record<string, Schema> }
interface Recorded { method: string; path: string; body?: unknown }

/** Validates `value` against a swagger 2.0 schema; returns the problems found. */
function validate(spec: Spec, schema: Schema, value: unknown, at = 'body'): string[] {
  if (schema.$ref) return validate(spec, spec.definitions[schema.$ref.replace('#/definitions/', '')]!, value, at);
  const problems: string[] = [];
  const t = schema.type ?? (schema.properties ? 'object' : undefined);
  if (t === 'object') {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) return [`${at}: expected an object`];
    const v = value as Record<string, unknown>;
    for (const r of schema.required ?? []) if (!(r in v)) problems.push(`${at}.${r}: required`);
    for (const [k, x] of Object.entries(v)) {
      const p = schema.properties?.[k];
      if (!p) problems.push(`${at}.${k}: not in the spec`);
      else problems.push(...validate(spec, p, x, `${at}.${k}`));
    }
  } else if (t === 'string') { if (typeof value !== 'string') problems.push(`${at}: expected a string`); }
  else if (t === 'integer') { if (!Number.isInteger(value)) problems.push(`${at}: expected an integer`); }
  else if (t === 'boolean') { if (typeof value !== 'boolean') problems.push(`${at}: expected a boolean`); }
  else if (t === 'array') { if (!Array.isArray(value)) problems.push(`${at}: expected an array`); else value.forEach((x, i) => problems.push(...validate(spec, schema.items!, x, `${at}[${i}]`))); }
  if (schema.enum && !schema.enum.includes(value)) problems.push(`${at}: ${JSON.stringify(value)} not one of ${JSON.stringify(schema.enum)}`);
  if (typeof value === 'number' && schema.minimum !== undefined && value < schema.minimum) problems.push(`${at}: below ${schema.minimum}`);
  if (typeof value === 'number' && schema.maximum !== undefined && value > schema.maximum) problems.push(`${at}: above ${schema.maximum}`);
  return problems;
}

function checkRequest(spec: Spec, r: Recorded): string[] {
  const entry = Object.entries(spec.paths).find(([p]) => new RegExp(`^${p.replace(/\{[^}]+\}/g, '[^/]+')}$`).test(r.path.split('?')[0]!));
  if (!entry) return [`${r.method} ${r.path}: path not in the spec`];
  const op = entry[1][r.method.toLowerCase()];
  if (!op) return [`${r.method} ${r.path}: method not in the spec`];
  const bodyParam = op.parameters?.find((p) => p.in === 'body');
  if (!bodyParam) return r.body === undefined ? [] : [`${r.method} ${r.path}: the spec takes no body`];
  if (r.body === undefined) return [`${r.method} ${r.path}: body required`];
  return validate(spec, bodyParam.schema!, r.body).map((p) => `${r.method} ${r.path}: ${p}`);
}

describe('firecracker driver contract (against firecracker.yaml)', function () {
  let spec: Spec;
  let home: string;
  let log: string;

  before(function () {
    assert.ok(existsSync(SPEC), `Firecracker's API spec is missing at ${SPEC} (see fixtures/firecracker/README.md)`);
    if (!existsSync(AGENT)) { console.log(`      SKIPPED: ${AGENT} not built (npm run build)`); this.skip(); }
    spec = parse(readFileSync(SPEC, 'utf8')) as Spec;
    home = mkdtempSync(path.join(os.tmpdir(), 'fc-contract-'));
    log = path.join(home, 'requests.jsonl');
    // a minimal template: the fake never boots it, but the driver links its files into each VM directory
    const tdir = path.join(home, 'templates', 'f'.repeat(24));
    mkdirSync(tdir, { recursive: true });
    for (const f of ['vmlinux', 'initramfs.cpio', 'rootfs.ext4', 'mem.bin', 'state.bin']) writeFileSync(path.join(tdir, f), f);
    writeFileSync(path.join(tdir, 'template.json'), JSON.stringify({
      version: 1, hash: 'f'.repeat(24), createdAt: new Date().toISOString(), kernel: 'tiny', accel: 'kvm', qemuVersion: 'x', memoryMiB: 256, vcpus: 1,
      writableMiB: 128, append: 'quiet', machineOpts: 'acpi=off', rootfsSource: 'test', files: {}, bootMs: 1, snapshotMs: 1,
    }));
    writeFileSync(path.join(home, 'templates', 'current'), 'f'.repeat(24));
    // the "firecracker binary": an ES module launcher (the driver spawns it with an empty environment)
    const launcher = path.join(home, 'firecracker.mjs');
    writeFileSync(launcher, `#!${process.execPath}\nglobalThis.FAKE_FC_CONFIG = ${JSON.stringify({ agent: AGENT, log })};\nawait import(${JSON.stringify(FAKE)});\n`);
    chmodSync(launcher, 0o755);
  });
  after(() => { if (home) rmSync(home, { recursive: true, force: true }); });

  it('builds the snapshot and restores working sandboxes with spec-conformant requests only', async () => {
    const launcher = path.join(home, 'firecracker.mjs');
    const config = loadConfig({ home, sandbox: { firecrackerBinary: launcher, poolSize: 0 } });
    const driver = new FirecrackerDriver(config);
    try {
      const probe = await driver.probe();
      assert.match(probe.detail, /1\.12\.0-fake/);
      const s = await driver.acquire({ sessionId: 'fc' });
      const r = await s.exec({ argv: ['/bin/sh', '-c', 'echo over-vsock'], timeoutMs: 5000, maxOutputBytes: 1000 });
      assert.equal(r.output.toString(), 'over-vsock\n');
      await s.destroy();
      const s2 = await driver.acquire({ sessionId: 'fc' });
      await s2.destroy();
    } finally { await driver.close(); }

    const requests = readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Recorded);
    const calls = requests.map((r) => `${r.method} ${r.path}`);
    for (const expected of ['PUT /machine-config', 'PUT /boot-source', 'PUT /drives/rootfs', 'PUT /vsock', 'PUT /actions', 'PATCH /vm', 'PUT /snapshot/create', 'PUT /snapshot/load']) {
      assert.ok(calls.includes(expected), `${expected} was sent`);
    }
    assert.equal(calls.filter((c) => c === 'PUT /snapshot/load').length, 2, 'one snapshot load per sandbox');
    const problems = requests.flatMap((r) => checkRequest(spec, r));
    assert.deepEqual(problems, []);
    const load = requests.find((r) => r.path === '/snapshot/load')!.body as Record<string, unknown>;
    assert.deepEqual(load.mem_backend, { backend_type: 'File', backend_path: 'mem.bin' });
    assert.equal(load.resume_vm, true);
  });

  it('catches a request that breaks the spec (the checker can fail)', () => {
    assert.notDeepEqual(checkRequest(spec, { method: 'PUT', path: '/machine-config', body: { vcpu_count: 0, mem_size_mib: 256, bogus: 1 } }), []);
    assert.notDeepEqual(checkRequest(spec, { method: 'PUT', path: '/actions', body: { action_type: 'Reboot' } }), []);
    assert.notDeepEqual(checkRequest(spec, { method: 'POST', path: '/vm', body: {} }), []);
    assert.notDeepEqual(checkRequest(spec, { method: 'PUT', path: '/snapshot/load', body: { mem_backend: { backend_type: 'File', backend_path: 'm' } } }), []);
  });

  it('surfaces Firecracker fault messages as errors', async () => {
    const sock = path.join(home, 'api.sock');
    const http = await import('node:http');
    const srv = http.createServer((_q, res) => { res.writeHead(400, { 'Content-Type': 'application/json' }); res.end('{"fault_message":"The requested operation is not supported after starting the microVM."}'); });
    await new Promise<void>((r) => srv.listen(sock, r));
    try {
      await assert.rejects(new FirecrackerApi(sock).start(), /400 The requested operation is not supported/);
    } finally { srv.close(); }
  });

  it('builds jailer argv with an explicit id, uid/gid, chroot base and the API socket inside the jail', () => {
    assert.deepEqual(jailerArgs({ binary: '/usr/bin/jailer', uid: 1234, gid: 1234, chrootBase: '/srv/jail' }, '/usr/bin/firecracker', 'fc-1'),
      ['--id', 'fc-1', '--exec-file', '/usr/bin/firecracker', '--uid', '1234', '--gid', '1234', '--chroot-base-dir', '/srv/jail', '--', '--api-sock', '/fc.sock']);
  });
});
