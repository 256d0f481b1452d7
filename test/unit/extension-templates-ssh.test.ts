// The Templates view on an SSH host, without an sshd: the template upload (the template file checked with the shared
// schema, the files it copies in packed with safe names and limits, what cannot be sent refused by name), the remote
// template scripts run through a real `sh` as the remote login shell would (their stdin inputs checked, the upload
// unpacked in a private directory and removed, a closed stdin stopping the build), and SshTemplates through a real
// SshHost whose `ssh` is a stand-in that runs the remote command here (installing a stand-in companion, listing,
// building with progress, removing).
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { scriptArgs, TEMPLATE_UPLOAD_MAX_BYTES, type RemoteScript } from '../../extension/launcher/ssh';
import { SshHost } from '../../extension/launcher/sshHost';
import { packTemplateUpload, TemplateUploadError } from '../../extension/templates/templateUpload';
import { SshTemplates } from '../../extension/templates/sshTemplates';
import { parseTemplateList, type BuildProgress } from '../../extension/templates/templateCli';
import { parseTemplateSpecText } from '../../companion/protocol/template';

const target = { host: 'box', remoteDir: '.perimeter' };

/** A stand-in companion CLI: `template ls` lists what `build` made (home/built.json), `rm` forgets it, `build` reports
 *  every file of the unpacked upload as progress, and for a template named "slow" waits until SIGTERM. */
const FAKE_CLI = `
const fs = require('fs'); const path = require('path');
const a = process.argv.slice(2); const out = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
const home = a[a.indexOf('--home') + 1]; fs.mkdirSync(home, { recursive: true });
const state = path.join(home, 'built.json');
const built = fs.existsSync(state) ? JSON.parse(fs.readFileSync(state, 'utf8')) : [];
if (a[1] === 'ls') { out(built.map((name) => ({ hash: 'ab'.repeat(12), dir: home, names: [name], current: false, diskBytes: 4096, kernel: 'tiny' }))); process.exit(0); }
if (a[1] === 'rm') {
  if (a[2] === 'default' && !a.includes('--force')) { process.stderr.write('perimeter template: template default is the default template\\n'); process.exit(1); }
  fs.writeFileSync(state, JSON.stringify(built.filter((n) => n !== a[2]))); process.exit(0);
}
const file = a[a.indexOf('-f') + 1]; const dir = path.dirname(file);
fs.writeFileSync(path.join(home, 'upload-dir'), dir);
const spec = JSON.parse(fs.readFileSync(file, 'utf8'));
const walk = (d, rel) => { for (const e of fs.readdirSync(d).sort()) { const p = path.join(d, e); const r = rel ? rel + '/' + e : e; const st = fs.statSync(p);
  out({ type: 'progress', stage: 'root filesystem', percent: 40, message: 'rootfs: got ' + r + ' ' + (st.mode & 0o777).toString(8) + (st.isFile() ? ' ' + fs.readFileSync(p, 'utf8').slice(0, 20) : '') });
  if (st.isDirectory()) walk(p, r); } };
walk(dir, '');
process.stdout.write('a plain warning\\n');
if (spec.name === 'slow') {
  process.on('SIGTERM', () => { fs.writeFileSync(path.join(home, 'stopped'), 'SIGTERM'); process.stderr.write('perimeter template: build stopped by SIGTERM\\n'); process.exit(143); });
  out({ type: 'progress', stage: 'boot', percent: 80, message: 'boot: waiting' });
  setInterval(() => {}, 1000);
} else {
  fs.writeFileSync(state, JSON.stringify([...built, spec.name]));
  out({ type: 'built', hash: 'ab'.repeat(12), name: spec.name, dir: home, default: false });
}
`;

/** Runs what ssh would hand to the remote login shell (everything after the destination), with HOME=home. */
function runRemote(home: string, script: RemoteScript, stdin: string | Buffer = '') {
  const argv = scriptArgs(target, script);
  return spawnSync('sh', ['-c', argv[argv.length - 1]!], { env: { PATH: process.env.PATH, HOME: home }, input: stdin, cwd: home });
}

/** Runs the build script with `stdin` written and stdin left open (as SshHost does) until the script exits. */
function buildHeldOpen(home: string, stdin: Buffer): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const argv = scriptArgs(target, 'templateBuildFile');
  const child = spawn('sh', ['-c', argv[argv.length - 1]!], { env: { PATH: process.env.PATH, HOME: home }, cwd: home });
  let stdout = '', stderr = '';
  child.stdout.on('data', (b: Buffer) => { stdout += b.toString(); });
  child.stderr.on('data', (b: Buffer) => { stderr += b.toString(); });
  child.stdin.write(stdin);
  return new Promise((resolve) => child.once('close', (status) => { child.stdin.destroy(); resolve({ status, stdout, stderr }); }));
}

function installFakeCli(home: string): void {
  mkdirSync(path.join(home, '.perimeter', 'bin'), { recursive: true });
  writeFileSync(path.join(home, '.perimeter', 'bin', 'perimeter.js'), FAKE_CLI);
}

const stateDir = (home: string) => path.join(home, '.local', 'state', 'perimeter');
const uploadStdin = (u: { fileName: string; archive: Buffer }) => Buffer.concat([Buffer.from(`${u.fileName}\n${u.archive.length}\n`), u.archive]);

/** A workspace with a template file that copies in a file and a directory (with a nested and an empty directory). */
function workspace(dir: string, spec: Record<string, unknown> = {}): string {
  const ws = path.join(dir, 'ws');
  mkdirSync(path.join(ws, 'tools', 'lib', 'empty'), { recursive: true });
  writeFileSync(path.join(ws, 'setup.sh'), 'echo setup\n', { mode: 0o755 });
  writeFileSync(path.join(ws, 'tools', 'lib', 'a.txt'), 'alpha');
  writeFileSync(path.join(ws, 'unrelated.txt'), 'not sent');
  const file = path.join(ws, 'perimeter.template.json');
  writeFileSync(file, JSON.stringify({ name: 'remote-tools', files: [{ from: 'setup.sh', to: '/usr/local/bin/setup' }, { from: './tools', to: '/opt/tools' }], ...spec }));
  return file;
}

describe('template upload to an SSH host', () => {
  let dir: string;
  beforeEach(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-upload-')); });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('packs the template file and exactly the files it copies in, with their modes', () => {
    const u = packTemplateUpload(workspace(dir));
    assert.equal(u.fileName, 'perimeter.template.json');
    writeFileSync(path.join(dir, 'u.tar'), u.archive);
    const listing = execFileSync('tar', ['-tvf', path.join(dir, 'u.tar')]).toString().trim().split('\n').map((l) => `${l.split(/\s+/)[0]} ${l.split(/\s+/).pop()}`);
    assert.deepEqual(listing, ['-rw-r--r-- perimeter.template.json', '-rwxr-xr-x setup.sh', 'drwxr-xr-x tools/', 'drwxr-xr-x tools/lib/', '-rw-r--r-- tools/lib/a.txt', 'drwxr-xr-x tools/lib/empty/']);
    assert.equal(u.members, 5);
  });

  it('checks the file with the companion\'s template schema before anything is sent', async () => {
    const file = workspace(dir, { pacakges: ['jq'] });
    assert.throws(() => packTemplateUpload(file), (e: Error) => e instanceof TemplateUploadError && /not a valid template file: \(top level\): Unrecognized key: "pacakges"/.test(e.message));
    assert.throws(() => parseTemplateSpecText('name: x\nkernel: huge\n', 't.yaml'), /kernel: Invalid option/);
    assert.equal(parseTemplateSpecText('name: yaml-one\n', 't.yaml').name, 'yaml-one');
    let sent = false;
    const store = new SshTemplates({ label: 'box', templateScript: async () => ({ code: 0, stdout: '[]', stderr: '' }), templateBuildUpload: async () => { sent = true; return { code: 0, stdout: '', stderr: '', cancelled: false }; } });
    await assert.rejects(store.build(file, () => {}), TemplateUploadError);
    assert.equal(sent, false, 'nothing reached the host');
  });

  it('refuses what it cannot send honestly: outside the directory, symbolic links, odd names, too much', () => {
    const file = workspace(dir);
    writeFileSync(path.join(dir, 'secret'), 'x');
    const respec = (spec: Record<string, unknown>) => { writeFileSync(file, JSON.stringify({ name: 'remote-tools', ...spec })); return file; };
    assert.throws(() => packTemplateUpload(respec({ files: [{ from: '../secret', to: '/s' }] })), /files: \.\.\/secret is outside the template file's directory/);
    symlinkSync(path.join(dir, 'secret'), path.join(dir, 'ws', 'tools', 'link'));
    assert.throws(() => packTemplateUpload(respec({ files: [{ from: 'tools', to: '/t' }] })), /files: tools\/link is a symbolic link; only regular files and directories are sent to an SSH host/);
    rmSync(path.join(dir, 'ws', 'tools', 'link'));
    assert.throws(() => packTemplateUpload(respec({ files: [{ from: 'nope', to: '/t' }] })), /files: nope does not exist/);
    const long = 'x'.repeat(120);
    writeFileSync(path.join(dir, 'ws', long), 'y');
    assert.throws(() => packTemplateUpload(respec({ files: [{ from: long, to: '/t' }] })), /cannot be sent to an SSH host \(names up to 100 bytes/);
    writeFileSync(path.join(dir, 'ws', 'big.bin'), Buffer.alloc(3 * 1024 * 1024));
    assert.throws(() => packTemplateUpload(respec({ files: [{ from: 'big.bin', to: '/b' }] }), 2 * 1024 * 1024), /exceed 2 MiB, the most sent to an SSH host/);
    const odd = path.join(dir, 'ws', 'my template.json');
    writeFileSync(odd, JSON.stringify({ name: 'x' }));
    assert.throws(() => packTemplateUpload(odd), /must be named with letters, digits/);
  });

  it('reads `template ls --json` rows with the shared schema and refuses anything else', () => {
    const row = { hash: 'ab'.repeat(12), dir: '/h', names: ['x'], current: true, diskBytes: 1 };
    assert.deepEqual(parseTemplateList(JSON.stringify([row])), [row]);
    assert.throws(() => parseTemplateList(JSON.stringify([{ ...row, diskBytes: '1' }])), /does not understand: 0\.diskBytes/);
    assert.throws(() => parseTemplateList('no templates built yet'), /did not print JSON/);
  });
});

describe('remote template scripts, run through sh', () => {
  let home: string;
  beforeEach(() => { home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-remote-tpl-')); installFakeCli(home); });
  afterEach(() => rmSync(home, { recursive: true, force: true }));

  it('lists and removes templates in the companion\'s state directory; a name is checked before it reaches the CLI', () => {
    mkdirSync(stateDir(home), { recursive: true });
    writeFileSync(path.join(stateDir(home), 'built.json'), JSON.stringify(['a', 'b']));
    assert.deepEqual(parseTemplateList(runRemote(home, 'templateList').stdout.toString()).map((r) => [r.names, r.dir]), [[['a'], stateDir(home)], [['b'], stateDir(home)]]);
    assert.equal(runRemote(home, 'templateRemove', 'a\n\n').status, 0);
    assert.deepEqual(JSON.parse(readFileSync(path.join(stateDir(home), 'built.json'), 'utf8')), ['b']);
    assert.equal(runRemote(home, 'templateRemove', 'default\n\n').status, 1);
    assert.equal(runRemote(home, 'templateRemove', 'default\nforce\n').status, 0);
    for (const bad of ['-rf\n\n', 'a b\n\n', '$(touch x)\n\n', '\n\n', 'a\n--all\n']) {
      const r = runRemote(home, 'templateRemove', bad);
      assert.equal(r.status, 2, bad);
      assert.match(r.stderr.toString(), /refusing/);
    }
  });

  it('builds an upload in a private directory under the state directory and removes it afterwards', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-upload-'));
    try {
      const r = await buildHeldOpen(home, uploadStdin(packTemplateUpload(workspace(dir))));
      assert.equal(r.status, 0, r.stderr);
      const lines = r.stdout.trim().split('\n');
      assert.deepEqual(lines.filter((l) => l.includes('rootfs: got')).map((l) => JSON.parse(l).message), [
        'rootfs: got perimeter.template.json 644 {"name":"remote-tool', 'rootfs: got setup.sh 755 echo setup\n', 'rootfs: got tools 755',
        'rootfs: got tools/lib 755', 'rootfs: got tools/lib/a.txt 644 alpha', 'rootfs: got tools/lib/empty 755']);
      assert.equal(JSON.parse(lines.at(-1)!).type, 'built');
      const uploaded = readFileSync(path.join(stateDir(home), 'upload-dir'), 'utf8');
      assert.match(uploaded, new RegExp(`^${stateDir(home)}/template-upload\\.[A-Za-z0-9]+$`));
      assert.equal(existsSync(uploaded), false, 'the upload is removed after the build');
    } finally { rmSync(dir, { recursive: true, force: true }); }
  });

  it('refuses a template file name or upload size it does not expect', () => {
    for (const [input, why] of [['../x.json\n10\n', /refusing template file name/], ['-f.json\n10\n', /refusing template file name/],
      ['x.txt\n10\n', /refusing template file name/], ['.hidden.json\n10\n', /refusing template file name/],
      ['x.json\n10k\n', /refusing upload size/], ['x.json\n\n', /refusing upload size/],
      [`x.json\n${TEMPLATE_UPLOAD_MAX_BYTES + 1}\n`, /refusing upload size/], ['x.json\n99999999999999999999\n', /refusing upload size/]] as const) {
      const r = runRemote(home, 'templateBuildFile', input);
      assert.equal(r.status, 2, input);
      assert.match(r.stderr.toString(), why, input);
    }
    const r = runRemote(home, 'templateBuildFile', 'x.json\n1024\n' + '\0'.repeat(1024));
    assert.equal(r.status, 1);
    assert.match(r.stderr.toString(), /the upload holds no template file x\.json/);
    assert.deepEqual(readdirSync(stateDir(home)).filter((n) => n.startsWith('template-upload')), [], 'nothing is left behind');
  });

  it('stops the build with SIGTERM when its stdin ends (a cancel, or a dropped connection) and removes the upload', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-upload-'));
    try {
      const argv = scriptArgs(target, 'templateBuildFile');
      const child = spawn('sh', ['-c', argv[argv.length - 1]!], { env: { PATH: process.env.PATH, HOME: home }, cwd: home });
      let stdout = '', stderr = '';
      child.stderr.on('data', (b: Buffer) => { stderr += b.toString(); });
      const waiting = new Promise<void>((resolve) => child.stdout.on('data', (b: Buffer) => { stdout += b.toString(); if (stdout.includes('boot: waiting')) resolve(); }));
      child.stdin.write(uploadStdin(packTemplateUpload(workspace(dir, { name: 'slow' }))));
      await waiting;
      assert.equal(existsSync(path.join(stateDir(home), 'stopped')), false, 'still building while stdin is open');
      const code = new Promise<number | null>((resolve) => child.once('close', resolve));
      child.stdin.end();
      assert.equal(await code, 143, stderr);
      assert.equal(readFileSync(path.join(stateDir(home), 'stopped'), 'utf8'), 'SIGTERM');
      assert.equal(existsSync(readFileSync(path.join(stateDir(home), 'upload-dir'), 'utf8')), false, 'the upload is removed');
    } finally { rmSync(dir, { recursive: true, force: true }); }
  });
});

describe('SshTemplates through SshHost (a stand-in ssh running the remote command here)', () => {
  let dir: string;
  let remoteHome: string;
  let store: SshTemplates;
  let fakeSsh: string;
  const fakeBundle = () => ({ version: 'test 1', files: [{ name: 'perimeter.js', data: Buffer.from(FAKE_CLI), mode: 0o755 }, { name: 'VERSION', data: Buffer.from('test 1\n'), mode: 0o644 }] });
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-sshtpl-'));
    remoteHome = path.join(dir, 'remote');
    mkdirSync(remoteHome);
    fakeSsh = path.join(dir, 'ssh');
    // ssh's options, "--" and the destination are dropped; the remote command runs with HOME=remoteHome
    writeFileSync(fakeSsh, `#!/bin/sh\nwhile [ "$#" -gt 0 ] && [ "$1" != "--" ]; do shift; done\nshift 2\nHOME='${remoteHome}' exec sh -c "$1"\n`);
    chmodSync(fakeSsh, 0o755);
    store = new SshTemplates(new SshHost({ target, sshPath: fakeSsh, bundle: fakeBundle }));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('installs the companion, builds a workspace file there with its progress, lists and removes the template', async () => {
    assert.deepEqual(await store.list(), []);
    assert.ok(existsSync(path.join(remoteHome, '.perimeter', 'bin', 'perimeter.js')), 'the companion was installed first');
    const seen: BuildProgress[] = [];
    const outcome = await store.build(workspace(dir), (p) => seen.push(p));
    assert.deepEqual([outcome.ok, outcome.cancelled, outcome.built?.name], [true, false, 'remote-tools'], outcome.error);
    assert.ok(seen.some((p) => p.stage === 'root filesystem' && p.percent === 40 && p.message === 'rootfs: got tools/lib/a.txt 644 alpha'));
    assert.ok(seen.some((p) => p.stage === 'build' && p.message === 'a plain warning'), 'a plain line is passed on as a message');
    assert.deepEqual((await store.list()).map((r) => r.names), [['remote-tools']]);
    await store.remove('remote-tools');
    assert.deepEqual(await store.list(), []);
    await assert.rejects(store.remove('default'), /^Error: template default is the default template$/);
    await assert.rejects(store.remove('--all'), /refusing template name/);
  });

  it('installs the companion once when the view and another command need it at the same time', async () => {
    const host = new SshHost({ target: { ...target, remoteDir: '.perimeter-concurrent' }, sshPath: fakeSsh, bundle: fakeBundle });
    const installs: string[] = [];
    host.onLog((l) => { if (l.startsWith('installing the companion')) installs.push(l); });
    const concurrent = new SshTemplates(host);
    assert.deepEqual(await Promise.all([concurrent.list(), concurrent.list(), host.ensureInstalled().then(() => [])]), [[], [], []]);
    assert.equal(installs.length, 1, installs.join('\n'));
    host.dispose();
  });

  it('cancel ends the remote build (SIGTERM there) and reports it cancelled once it has ended', async () => {
    const abort = new AbortController();
    rmSync(path.join(dir, 'ws'), { recursive: true, force: true });
    const outcome = await store.build(workspace(dir, { name: 'slow' }), (p) => { if (p.message === 'boot: waiting') abort.abort(); }, abort.signal);
    assert.deepEqual([outcome.ok, outcome.cancelled, outcome.error], [false, true, 'cancelled']);
    assert.equal(readFileSync(path.join(stateDir(remoteHome), 'stopped'), 'utf8'), 'SIGTERM');
  });
});
