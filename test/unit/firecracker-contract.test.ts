// Contract tests of the Firecracker driver. Firecracker cannot run here (no working KVM), so a fake API server
// (test/vm/fixtures/fake-firecracker.mjs) records every request while the driver builds its snapshot and restores
// sandboxes; each recorded request is then checked against our own contract of the Firecracker API subset the driver
// uses (fixtures/firecracker-contract.ts: method, path template, body fields, their types and values; unknown ones
// fail). That check always runs. Firecracker's published spec is not in the repository (it is third-party material
// we may not copy here); where it is present at ../shared/reference/firecracker/firecracker.yaml, one more test checks
// that our contract agrees with it, and where it is absent that test is skipped under a title saying so.
// The guest side is the real agent binary in host test mode, reached through the vsock CONNECT handshake.
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse } from 'yaml';
import { z } from 'zod';
import { loadConfig } from '../../companion/config';
import { FirecrackerDriver, jailerArgs } from '../../companion/sandbox/firecracker/driver';
import { FirecrackerApi } from '../../companion/sandbox/firecracker/api';
import { FIRECRACKER_CONTRACT, contractBreaches, type ContractRequest, type SentRequest } from './fixtures/firecracker-contract';

const SPEC = path.resolve(__dirname, '../../../shared/reference/firecracker/firecracker.yaml');
const AGENT = path.resolve(__dirname, '../../dist/guest/perimeter-agent');
const FAKE = path.resolve(__dirname, '../vm/fixtures/fake-firecracker.mjs');

type SpecSchema = { $ref?: string; type?: string; required?: string[]; properties?: Record<string, SpecSchema>; enum?: unknown[]; minimum?: number; maximum?: number; items?: SpecSchema };
interface Spec { paths: Record<string, Record<string, { parameters?: { in: string; required?: boolean; schema?: SpecSchema }[] }>>; definitions: Record<string, SpecSchema> }

/** Where the zod schema `ours` disagrees with the swagger 2.0 schema `theirs`: a type, value or bound the spec does
 *  not allow, or a field the spec requires that ours leaves optional. */
function schemaDisagreements(spec: Spec, ours: z.ZodType, theirs: SpecSchema, at: string): string[] {
  if (theirs.$ref) return schemaDisagreements(spec, ours, spec.definitions[theirs.$ref.replace('#/definitions/', '')]!, at);
  const theirType = theirs.type ?? (theirs.properties ? 'object' : undefined);
  if (ours instanceof z.ZodObject) {
    if (theirType !== 'object') return [`${at}: ours is an object, the spec's ${theirType}`];
    const shape = ours.shape as Record<string, z.ZodType>;
    const problems: string[] = [];
    for (const r of theirs.required ?? []) if (!(r in shape) || shape[r] instanceof z.ZodOptional) problems.push(`${at}.${r}: the spec requires it`);
    for (const [k, field] of Object.entries(shape)) {
      const theirField = theirs.properties?.[k];
      if (!theirField) problems.push(`${at}.${k}: not in the spec`);
      else problems.push(...schemaDisagreements(spec, field instanceof z.ZodOptional ? field.unwrap() as z.ZodType : field, theirField, `${at}.${k}`));
    }
    return problems;
  }
  if (ours instanceof z.ZodEnum) {
    if (theirType !== 'string') return [`${at}: ours is a string enum, the spec's ${theirType}`];
    const extra = ours.options.filter((o) => !(theirs.enum ?? ours.options).includes(o));
    return extra.length ? [`${at}: ${JSON.stringify(extra)} not among the spec's values`] : [];
  }
  if (ours instanceof z.ZodNumber) {
    const ourType = ours.isInt ? 'integer' : 'number';
    if (theirType !== ourType) return [`${at}: ours is ${ourType}, the spec's ${theirType}`];
    const problems: string[] = [];
    if (theirs.minimum !== undefined && (ours.minValue === null || ours.minValue < theirs.minimum)) problems.push(`${at}: ours admits values below the spec's minimum ${theirs.minimum}`);
    if (theirs.maximum !== undefined && (ours.maxValue === null || ours.maxValue > theirs.maximum)) problems.push(`${at}: ours admits values above the spec's maximum ${theirs.maximum}`);
    return problems;
  }
  const ourType = ours instanceof z.ZodString ? 'string' : ours instanceof z.ZodBoolean ? 'boolean' : `unsupported (${ours.def.type})`;
  return theirType === ourType ? [] : [`${at}: ours is ${ourType}, the spec's ${theirType}`];
}

/** Where `contract` disagrees with the spec: a path or method the spec lacks, a body it does not take, a field. */
function specDisagreements(spec: Spec, contract: readonly ContractRequest[]): string[] {
  return contract.flatMap((c) => {
    const at = `${c.method} ${c.path}`;
    const op = spec.paths[c.path]?.[c.method.toLowerCase()];
    if (!spec.paths[c.path]) return [`${at}: path not in the spec`];
    if (!op) return [`${at}: method not in the spec`];
    const bodyParam = op.parameters?.find((p) => p.in === 'body');
    if (c.body === null) return bodyParam?.required ? [`${at}: the spec requires a body`] : [];
    if (!bodyParam?.schema) return [`${at}: the spec takes no body`];
    return schemaDisagreements(spec, c.body, bodyParam.schema, `${at}: body`);
  });
}

describe('firecracker driver contract (against our contract, fixtures/firecracker-contract.ts)', function () {
  let home: string;
  let log: string;

  before(function () {
    if (!existsSync(AGENT)) { console.log(`      SKIPPED: ${AGENT} not built (npm run build)`); this.skip(); }
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

  it('builds the snapshot and restores working sandboxes, sending only requests the contract allows', async () => {
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

    const requests = readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as SentRequest);
    const calls = requests.map((r) => `${r.method} ${r.path}`);
    for (const expected of ['PUT /machine-config', 'PUT /boot-source', 'PUT /drives/rootfs', 'PUT /vsock', 'PUT /actions', 'PATCH /vm', 'PUT /snapshot/create', 'PUT /snapshot/load']) {
      assert.ok(calls.includes(expected), `${expected} was sent`);
    }
    assert.equal(calls.filter((c) => c === 'PUT /snapshot/load').length, 2, 'one snapshot load per sandbox');
    assert.deepEqual(requests.flatMap((r) => contractBreaches(r)), []);
    const load = requests.find((r) => r.path === '/snapshot/load')!.body as Record<string, unknown>;
    assert.deepEqual(load.mem_backend, { backend_type: 'File', backend_path: 'mem.bin' });
    assert.equal(load.resume_vm, true);
  });

  it('the contract refuses unknown paths, methods and fields, missing fields, wrong types and values', () => {
    const breaches = (r: SentRequest) => contractBreaches(r).join('\n');
    assert.match(breaches({ method: 'PUT', path: '/machine-config', body: { vcpu_count: 1, mem_size_mib: 256, bogus: 1 } }), /Unrecognized key: "bogus"/);
    assert.match(breaches({ method: 'PUT', path: '/machine-config', body: { vcpu_count: '1', mem_size_mib: 256 } }), /body\.vcpu_count/);
    assert.match(breaches({ method: 'PUT', path: '/machine-config', body: { vcpu_count: 0, mem_size_mib: 256 } }), /body\.vcpu_count/);
    assert.match(breaches({ method: 'PUT', path: '/actions', body: { action_type: 'Reboot' } }), /body\.action_type/);
    assert.match(breaches({ method: 'POST', path: '/vm', body: { state: 'Paused' } }), /method not in the contract/);
    assert.match(breaches({ method: 'PUT', path: '/network-interfaces/eth0', body: {} }), /path not in the contract/);
    assert.match(breaches({ method: 'PUT', path: '/snapshot/load', body: { mem_backend: { backend_type: 'File', backend_path: 'm' } } }), /body\.snapshot_path/);
    assert.match(breaches({ method: 'PUT', path: '/drives/a', body: { drive_id: 'b', path_on_host: 'r', is_root_device: false, is_read_only: true } }), /differs from the path's "a"/);
    assert.match(breaches({ method: 'GET', path: '/version', body: {} }), /takes no body/);
    assert.deepEqual(contractBreaches({ method: 'PUT', path: '/drives/rootfs', body: { drive_id: 'rootfs', path_on_host: 'r', is_root_device: false, is_read_only: true } }), []);
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

const specPresent = existsSync(SPEC);
describe(specPresent
  ? `our Firecracker contract agrees with Firecracker's API spec (${SPEC})`
  : `our Firecracker contract vs Firecracker's API spec: SKIPPED, the spec is absent at ${SPEC}`, function () {
  let spec: Spec;
  before(function () {
    if (!specPresent) { console.log(`      SKIPPED: Firecracker's API spec is absent at ${SPEC}; the driver's requests were checked against our contract only`); this.skip(); }
    spec = parse(readFileSync(SPEC, 'utf8')) as Spec;
  });

  it('every contracted path and method exists in the spec, and every field exists there with the same type and values', () => {
    assert.deepEqual(specDisagreements(spec, FIRECRACKER_CONTRACT), []);
  });

  it('a contract that strays from the spec is caught (the comparison can fail)', () => {
    const strayed: ContractRequest[] = [
      { method: 'PUT', path: '/machine-config', body: z.strictObject({ vcpu_count: z.string(), mem_size_mib: z.int(), bogus: z.boolean() }) },
      { method: 'PUT', path: '/vsock', body: z.strictObject({ guest_cid: z.int(), uds_path: z.string().optional() }) },
      { method: 'PUT', path: '/actions', body: z.strictObject({ action_type: z.enum(['Reboot']) }) },
      { method: 'GET', path: '/vm', body: null },
      { method: 'PUT', path: '/no-such-path', body: null },
    ];
    assert.deepEqual(specDisagreements(spec, strayed), [
      'PUT /machine-config: body.vcpu_count: ours is string, the spec\'s integer',
      'PUT /machine-config: body.bogus: not in the spec',
      'PUT /vsock: body.uds_path: the spec requires it',
      'PUT /vsock: body.guest_cid: ours admits values below the spec\'s minimum 3',
      'PUT /actions: body.action_type: ["Reboot"] not among the spec\'s values',
      'GET /vm: method not in the spec',
      'PUT /no-such-path: path not in the spec',
    ]);
  });
});
