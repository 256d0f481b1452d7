// Templates without VMs: the template file (JSON and YAML, validated with the zod schema, errors that name the
// field, files confined to the file's directory), the shipped JSON Schema (generated from the zod schema, and what
// package.json gives VS Code), the rootfs cache key, named templates side by side (registry.ts), pool sizes per
// template within the memory budget, the build's progress stages, and the session metadata key.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BUILTIN_SPECS, builtinSpec, loadSpecFile, parseSpec, templateJsonSchema, SANDBOX_PACKAGES } from '../../companion/sandbox/template/spec';
import { debianRootfsKey, mmdebstrapArgs, subordinateIdsProblem } from '../../companion/sandbox/template/rootfs';
import { findNamedTemplate, listTemplates, nameTemplate, removeTemplate, setCurrent } from '../../companion/sandbox/template/registry';
import { findTemplate } from '../../companion/sandbox/template/manifest';
import { planPools, QemuTemplatePools } from '../../companion/sandbox/qemu/template-pools';
import { loadConfig } from '../../companion/config';
import { choosePersistence } from '../../companion/persist/choose';
import { DiskPersistence } from '../../companion/persist/disk/persistence';
import { buildStage, sessionTemplate, SESSION_TEMPLATE_KEY } from '../../companion/protocol/template';

const root = path.resolve(__dirname, '../..');

describe('template files', () => {
  let dir: string;
  beforeEach(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-spec-')); });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('reads JSON and YAML into the same validated template, with defaults', () => {
    const json = parseSpec(JSON.stringify({ name: 'node', packages: ['nodejs'], env: { NODE_ENV: 'test' }, memoryMiB: 2048 }), 'perimeter.template.json');
    const yaml = parseSpec('name: node\npackages: [nodejs]\nenv:\n  NODE_ENV: test\nmemoryMiB: 2048\n', 'perimeter.template.yaml');
    assert.deepEqual(json, yaml);
    assert.equal(json.base, 'bookworm');
    assert.equal(json.workdir, '/workspace');
    assert.equal(json.vcpus, 1);
    assert.deepEqual(json.commands, []);
  });

  it('refuses a bad file with every problem named by its field', () => {
    assert.throws(() => parseSpec(JSON.stringify({ name: 'Bad Name', packages: ['ok', 'not a package'], memoryMiB: 8, extra: 1, env: { BASH_ENV: 'x' }, files: [{ from: 'a', to: 'relative' }] }), 'f.json'),
      (err: Error) => {
        for (const field of ['name', 'packages.1', 'memoryMiB', '(top level)', 'env.BASH_ENV', 'files.0.to']) assert.ok(err.message.includes(`${field}:`), `${field} in ${err.message}`);
        return true;
      });
    assert.throws(() => parseSpec('name: [unclosed', 'f.yaml'), /not valid YAML/);
    assert.throws(() => parseSpec('{', 'f.json'), /not valid JSON/);
    assert.throws(() => parseSpec(`name: x\nx: &a [1]\ny: [${Array(200).fill('*a').join(', ')}]\n`, 'f.yaml'), /not valid YAML/, 'alias bombs are refused');
  });

  it('copies in only files inside the template file\'s directory', () => {
    mkdirSync(path.join(dir, 'repo', 'scripts'), { recursive: true });
    writeFileSync(path.join(dir, 'repo', 'scripts', 'setup.sh'), 'echo hi\n');
    writeFileSync(path.join(dir, 'secret'), 'key');
    symlinkSync(path.join(dir, 'secret'), path.join(dir, 'repo', 'link'));
    const file = path.join(dir, 'repo', 'perimeter.template.json');
    writeFileSync(file, JSON.stringify({ name: 'ok', files: [{ from: 'scripts/setup.sh', to: '/opt/setup.sh', mode: '0755' }, { from: 'scripts', to: '/opt/scripts' }] }));
    assert.equal(loadSpecFile(file).spec.files.length, 2);
    for (const from of ['../secret', 'link', '/etc/passwd', 'missing']) {
      writeFileSync(file, JSON.stringify({ name: 'bad', files: [{ from, to: '/x' }] }));
      assert.throws(() => loadSpecFile(file), /outside the template file's directory|does not exist/, from);
    }
  });

  it('keys the root filesystem by what makes it: packages as a set, file contents, commands', () => {
    mkdirSync(path.join(dir, 'a'));
    writeFileSync(path.join(dir, 'a', 'f'), 'one');
    const file = path.join(dir, 'perimeter.template.json');
    const key = (spec: object) => { writeFileSync(file, JSON.stringify({ name: 'k', ...spec })); return debianRootfsKey(loadSpecFile(file)); };
    const base = key({ packages: ['jq', 'zip'], files: [{ from: 'a', to: '/a' }] });
    assert.equal(key({ packages: ['zip', 'jq', 'jq'], files: [{ from: 'a', to: '/a' }], memoryMiB: 4096, description: 'x' }), base, 'order, duplicates and VM sizes do not matter');
    assert.notEqual(key({ packages: ['jq'], files: [{ from: 'a', to: '/a' }] }), base);
    assert.notEqual(key({ packages: ['jq', 'zip'], files: [{ from: 'a', to: '/b' }] }), base);
    assert.notEqual(key({ packages: ['jq', 'zip'], files: [{ from: 'a', to: '/a' }], commands: ['true'] }), base);
    writeFileSync(path.join(dir, 'a', 'f'), 'two');
    assert.notEqual(key({ packages: ['jq', 'zip'], files: [{ from: 'a', to: '/a' }] }), base, 'a copied file\'s content counts');
  });

  it('bootstraps with the sandbox\'s own packages plus the file\'s, files and commands as hooks in order', () => {
    writeFileSync(path.join(dir, 'setup.sh'), 'true');
    const file = path.join(dir, 'perimeter.template.json');
    writeFileSync(file, JSON.stringify({ name: 'k', packages: ['nodejs'], files: [{ from: 'setup.sh', to: '/opt/setup.sh', mode: '0755' }], commands: ["echo 'it''s'"], env: { A: "b'c" } }));
    const scratch = mkdtempSync(path.join(dir, 'scratch-'));
    const args = mmdebstrapArgs(loadSpecFile(file), scratch);
    const include = args.find((a) => a.startsWith('--include='))!.slice(10).split(',');
    for (const p of [...SANDBOX_PACKAGES, 'nodejs']) assert.ok(include.includes(p), p);
    assert.ok(args.includes('--mode=unshare'));
    const hooks = args.filter((a) => a.startsWith('--customize-hook=')).map((a) => a.slice(17));
    assert.deepEqual(hooks.map((h) => h.split(' ')[0]), ['chroot', 'upload', 'chroot', 'upload', 'chroot', 'rm']);
    const script = readFileSync(path.join(scratch, 'command-1.sh'), 'utf8');
    assert.match(script, /export A='b'\\''c'/);
    assert.match(script, /echo 'it''s'/);
    assert.deepEqual(args.slice(-3), ['bookworm', '-', 'http://deb.debian.org/debian']);
  });

  it('says how to give a user the subordinate ids a rootless build needs, before bootstrapping', () => {
    const user = { uid: 1000, gid: 1000, username: 'dev', homedir: '/home/dev', shell: '/bin/bash' };
    const files = { uid: path.join(dir, 'subuid'), gid: path.join(dir, 'subgid') };
    assert.match(subordinateIdsProblem(user, files) ?? '', /dev has no subordinate ids in .*subuid and .*subgid.*usermod --add-subuids 100000-165535 --add-subgids 100000-165535 dev/);
    writeFileSync(files.uid, 'other:100000:65536\ndev:165536:65536\n');
    writeFileSync(files.gid, '1000:165536:65536\n');
    assert.equal(subordinateIdsProblem(user, files), null);
    assert.equal(subordinateIdsProblem({ ...user, uid: 0, username: 'root' }, { uid: '/nonexistent', gid: '/nonexistent' }), null, 'root needs none');
  });

  it('ships the JSON Schema generated from the zod schema, and contributes it to VS Code', () => {
    const shipped = JSON.parse(readFileSync(path.join(root, 'schemas/perimeter.template.schema.json'), 'utf8')) as { properties: Record<string, unknown> };
    assert.deepEqual(shipped, templateJsonSchema(), 'schemas/perimeter.template.schema.json is stale: node dist/perimeter.js template schema > schemas/perimeter.template.schema.json');
    assert.deepEqual(Object.keys(shipped.properties).sort(), ['$schema', 'base', 'commands', 'description', 'env', 'files', 'kernel', 'memoryMiB', 'mirror', 'name', 'packages', 'sessionDiskMiB', 'vcpus', 'workdir']);
    const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
    const v = (pkg.contributes.jsonValidation as Array<{ fileMatch: string | string[]; url: string }>).find((j) => j.url === './schemas/perimeter.template.schema.json');
    assert.ok(v, 'package.json contributes the schema');
    assert.ok([v.fileMatch].flat().includes('perimeter.template.json'));
    assert.ok(pkg.dependencies.yaml, 'yaml is a runtime dependency (the companion reads YAML template files)');
    assert.match(readFileSync(path.join(root, '.vscodeignore'), 'utf8'), /^!schemas\/\*\*$/m, 'the .vsix carries the schema');
  });

  it('has a default template with everyday tools and a minimal one', () => {
    assert.deepEqual(Object.keys(BUILTIN_SPECS).sort(), ['default', 'minimal']);
    for (const p of ['procps', 'iproute2', 'nodejs', 'npm', 'gcc', 'python3-venv', 'jq']) assert.ok(builtinSpec('default').spec.packages.includes(p), p);
    assert.deepEqual(builtinSpec('minimal').spec.packages, []);
    assert.throws(() => builtinSpec('huge'), /no built-in template "huge"/);
  });
});

describe('named templates', () => {
  let home: string;
  const fake = (hash: string, createdAt = '2026-01-01T00:00:00.000Z') => {
    const dir = path.join(home, 'templates', hash);
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, 'template.json'), JSON.stringify({ version: 1, hash, createdAt, kernel: 'tiny', accel: 'tcg', qemuVersion: 'QEMU 7.2',
      memoryMiB: 256, vcpus: 1, writableMiB: 128, append: '', machineOpts: '', rootfsSource: 'test', files: {}, bootMs: 1, snapshotMs: 1 }));
    writeFileSync(path.join(dir, 'rootfs.ext4'), Buffer.alloc(8192, 1));
  };
  beforeEach(() => { home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-names-')); });
  afterEach(() => rmSync(home, { recursive: true, force: true }));

  it('keeps several templates side by side, resolves names, hashes and prefixes, and removes what nothing names', () => {
    const a = 'aaaaaaaaaaaaaaaaaaaaaaaa', b = 'bbbbbbbbbbbbbbbbbbbbbbbb';
    fake(a); fake(b, '2026-02-01T00:00:00.000Z');
    nameTemplate(home, 'default', a);
    nameTemplate(home, 'node', b);
    nameTemplate(home, 'node-copy', b);
    setCurrent(home, a);
    assert.equal(findTemplate(home)!.manifest.hash, a);
    assert.equal(findTemplate(home, 'node')!.manifest.hash, b, 'sandbox.template may be a name');
    assert.equal(findNamedTemplate(home, 'bbbbbbbb')!.manifest.hash, b);
    assert.equal(findNamedTemplate(home, 'nothing'), null);
    assert.throws(() => findTemplate(home, 'nothing'), /no template named "nothing"/);
    const ls = listTemplates(home);
    assert.deepEqual(ls.map((e) => [e.names, e.current]), [[['default'], true], [['node', 'node-copy'], false]]);
    assert.ok(ls[0]!.diskBytes >= 8192);

    assert.deepEqual(removeTemplate(home, 'node'), { names: ['node'], deleted: null, kept: `${b} is still named node-copy` });
    assert.deepEqual(removeTemplate(home, 'node-copy'), { names: ['node-copy'], deleted: b });
    assert.throws(() => removeTemplate(home, 'default'), /is the default template/);
    assert.deepEqual(removeTemplate(home, 'default', { force: true }), { names: ['default'], deleted: a });
    assert.equal(findTemplate(home), null);
    assert.deepEqual(listTemplates(home), []);
    assert.throws(() => removeTemplate(home, 'default'), /no template "default"/);
    assert.throws(() => nameTemplate(home, '../escape', a), /not a template name/);
  });

  it('the per-template driver reports the default template\'s session disk (persistence chooses session disks by it)', () => {
    const a = 'cccccccccccccccccccccccc';
    fake(a);
    const manifest = path.join(home, 'templates', a, 'template.json');
    writeFileSync(manifest, JSON.stringify({ ...JSON.parse(readFileSync(manifest, 'utf8')), sessionDisk: { bytes: 8 * 2 ** 30 } }));
    setCurrent(home, a);
    const config = loadConfig({ home }, {});
    assert.equal(new QemuTemplatePools(config).sessionDiskBytes(), 8 * 2 ** 30);
    assert.ok(choosePersistence({ config, driver: new QemuTemplatePools(config) }) instanceof DiskPersistence);
  });
});

describe('per-template warm pools', () => {
  it('keeps the default full, sizes others by recent use, and stays within the memory budget', () => {
    const d = (key: string, recentUses: number, memoryMiB = 256, isDefault = false) => ({ key, recentUses, memoryMiB, isDefault });
    assert.deepEqual([...planPools([d('def', 0, 256, true), d('node', 0)], 2, 4096)], [['def', 2], ['node', 0]], 'an unused template keeps none ready');
    assert.deepEqual(Object.fromEntries(planPools([d('def', 0, 256, true), d('node', 1), d('big', 5, 2048)], 2, 8192)), { def: 2, node: 1, big: 2 });
    assert.deepEqual(Object.fromEntries(planPools([d('def', 1, 256, true), d('big', 5, 2048)], 2, 2560)), { big: 1, def: 2 }, 'the most used first, within the budget');
    assert.deepEqual(Object.fromEntries(planPools([d('def', 0, 256, true)], 2, 300)), { def: 1 });
    assert.deepEqual(Object.fromEntries(planPools([d('def', 0, 256, true)], 2, 0)), { def: 0 });
  });
});

describe('template build progress and session metadata', () => {
  it('maps build lines onto stages with percentages that only grow through a build', () => {
    const lines = ['template: tiny kernel, 256 MiB', 'kernel: compiling', 'kernel: 500 of ~985 files compiled (100 s)', 'kernel: tiny kernel built in 300 s',
      'rootfs: mmdebstrap --mode=unshare bookworm', 'rootfs: installing remaining packages inside the chroot...', 'accel: tcg', 'boot: starting the template VM',
      'warm-up: GNU bash', 'ready shell: started', 'snapshot: device state written in 12 ms', 'template: ready at /x'];
    const stages = lines.map(buildStage);
    for (let i = 1; i < stages.length; i++) assert.ok(stages[i]!.percent >= stages[i - 1]!.percent, `${lines[i]} (${stages[i]!.percent} after ${stages[i - 1]!.percent})`);
    assert.equal(stages[2]!.stage, 'kernel');
    assert.ok(stages[2]!.percent > stages[1]!.percent && stages[2]!.percent < stages[3]!.percent);
    assert.equal(stages.at(-1)!.percent, 100);
  });

  it('reads the session\'s template from its metadata', () => {
    assert.equal(SESSION_TEMPLATE_KEY, 'perimeter.template');
    assert.equal(sessionTemplate({ 'perimeter.template': ' node ' }), 'node');
    for (const m of [undefined, null, {}, { 'perimeter.template': 3 }, { 'perimeter.template': '  ' }]) assert.equal(sessionTemplate(m), null);
  });
});
