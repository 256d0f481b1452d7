// Confinement of each VM, each attack tried for real.
// - The jail: the exact launcher that starts QEMU (qemu/confine.ts), with a probe program in QEMU's place, tries to
//   read, list, write and connect to everything of the state directory a VM must not reach: the journal, a session
//   store, control.json, a key file, another VM's socket and files, the host's loopback, and the template's memory
//   file for writing. The state directory is made world-writable for the test, so the namespace is what stops it.
// - Real VMs: QEMU's own process (uid, capabilities, seccomp, namespaces, rlimits, host cgroup, what it sees), a clone
//   that writes its whole RAM leaves mem.bin byte-identical and the next clone answers as before, a command that tries
//   to leave its cgroup and then forks without end is capped and killed, and the guest's /proc, dmesg, /dev and /sys
//   show no host path, key or other session.
// - Fail closed: without bubblewrap the QEMU driver refuses (doctor says why and how to fix it); `confinement: none`
//   is logged as a warning.
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { loadConfig, statePaths, type Config } from '../../companion/config';
import { Confinement, findReadonlyRamAdapter, parseJailInfo } from '../../companion/sandbox/qemu/confine';
import { detectHostCgroup } from '../../companion/sandbox/qemu/cgroup';
import { QemuDriver, type QemuSandbox } from '../../companion/sandbox/qemu/driver';
import { findTemplate, loadTemplate, type Template } from '../../companion/sandbox/template/manifest';
import { addLogSink, setStderrLogging, type LogRecord } from '../../companion/log';
import { sh, skipWithoutVms, text, vmConfig } from './helpers';
import { CLI, rmDir, tmpDir } from '../worker/helpers';

const sha256 = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');

/** A private state directory holding a copy of the built template (copies, never links: an attack that got through
 *  must not reach the shared template). */
function homeWithTemplate(): { home: string; template: Template } {
  const src = findTemplate(vmConfig().home, vmConfig().sandbox.template)!;
  const home = tmpDir('perimeter-confine-');
  const dir = path.join(home, 'templates', src.manifest.hash);
  mkdirSync(dir, { recursive: true });
  for (const f of readdirSync(src.dir)) execFileSync('cp', ['--sparse=always', path.join(src.dir, f), path.join(dir, f)]);
  writeFileSync(path.join(home, 'templates', 'current'), src.manifest.hash);
  return { home, template: loadTemplate(dir) };
}

function config(home: string, sandbox: Record<string, unknown> = {}): Config {
  return loadConfig({ home, sandbox: { poolSize: 0, ...sandbox } }, {});
}

function status(pid: number): Record<string, string> {
  return Object.fromEntries(readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').filter(Boolean).map((l) => { const i = l.indexOf(':'); return [l.slice(0, i), l.slice(i + 1).trim()]; }));
}

/** Stands in for QEMU: answers --version as the real one does (so the jail opens mem.bin the same way), then tries
 *  everything it is given, prints {uid, gid, groups, root, results} as one line and waits to be killed. The attacks on
 *  mem.bin run twice: through the read-only RAM adapter QEMU < 8.2 is given, and in a copy of the probe started
 *  without it (a QEMU that bypasses the adapter meets the kernel's checks alone). */
const probeSource = (qemuVersion: string) => `#!/usr/bin/node
const fs = require('fs'), net = require('net'), child = require('child_process');
if (process.argv[2] === '--version') { console.log(${JSON.stringify(qemuVersion)}); process.exit(0); }
const spec = JSON.parse(process.argv[2]);
const results = {};
const attempt = (name, fn) => { try { fn(); results[name] = 'ok'; } catch (e) { results[name] = e.code || e.message; } };
const writeByte = (p, flags) => { const fd = fs.openSync(p, flags); try { fs.writeSync(fd, 'x', 0); } finally { fs.closeSync(fd); } };
const m = spec.memFile;
if (process.argv[3] === 'raw') {
  attempt('open rw mem.bin', () => writeByte(m, fs.constants.O_RDWR));
  attempt('open wo mem.bin', () => writeByte(m, fs.constants.O_WRONLY));
  attempt('truncate mem.bin', () => fs.truncateSync(m, 0));
  attempt('chmod mem.bin', () => fs.chmodSync(m, 0o666));
  attempt('unlink mem.bin', () => fs.unlinkSync(m));
  attempt('replace mem.bin', () => { fs.writeFileSync(spec.own + '/evil', 'x'); fs.renameSync(spec.own + '/evil', m); });
  process.stdout.write(JSON.stringify(results));
  process.exit(0);
}
if (process.env.LD_PRELOAD) attempt('adapter: write mem.bin', () => writeByte(m, fs.constants.O_RDWR));
const raw = child.spawnSync(process.execPath, [__filename, process.argv[2], 'raw'], { env: {}, encoding: 'utf8' });
try { Object.assign(results, JSON.parse(raw.stdout)); } catch { results.raw = raw.stderr; }
for (const p of spec.read) attempt('read ' + p, () => fs.readFileSync(p));
for (const p of spec.list) { try { results['list ' + p] = 'ok: ' + fs.readdirSync(p).sort().join(' '); } catch (e) { results['list ' + p] = e.code; } }
for (const p of spec.write) attempt('write ' + p, () => { const fd = fs.openSync(p, 'r+'); fs.writeSync(fd, 'x'); fs.closeSync(fd); });
for (const p of spec.create) attempt('create ' + p, () => fs.writeFileSync(p, 'x', { flag: 'wx' }));
attempt('signal companion', () => process.kill(spec.companionPid, 0));
const connect = (name, o) => new Promise((resolve) => {
  const s = net.connect(o);
  s.once('connect', () => { results[name] = 'ok'; s.destroy(); resolve(); });
  s.once('error', (e) => { results[name] = e.code; resolve(); });
});
Promise.all(spec.connect.map((c) => connect('connect ' + (c.path || c.host + ':' + c.port), c))).then(() => {
  process.stdout.write(JSON.stringify({ uid: process.getuid(), gid: process.getgid(), groups: process.getgroups(), root: fs.readdirSync('/').sort(), results }) + '\\n');
  setInterval(() => {}, 1 << 30);
});
`;

describe('VM confinement: the jail QEMU runs in, probed', function () {
  this.timeout(120_000);
  let home: string;
  let template: Template;
  const servers: net.Server[] = [];
  before(function () { skipWithoutVms(this); ({ home, template } = homeWithTemplate()); });
  after(() => { for (const s of servers) s.close(); if (home) rmDir(home); });

  it('cannot read, list, write or connect to anything of the host but its own run directory and template files', async () => {
    const paths = statePaths(home);
    // what a VM must never reach, world-readable and writable so that only the namespace can stop it
    const session = path.join(paths.sessions, 'sess-other', 'blobs');
    for (const d of [paths.journal, session, path.join(paths.vms, 'vm-other')]) { mkdirSync(d, { recursive: true }); chmodSync(d, 0o777); }
    const secrets = {
      journal: path.join(paths.journal, 'journal.jsonl'), store: path.join(session, 'blob'), control: paths.controlFile,
      key: path.join(home, 'environment.key'), otherVmFile: path.join(paths.vms, 'vm-other', 'qemu.pid'),
    };
    for (const f of Object.values(secrets)) { writeFileSync(f, 'sk-ant-canary'); chmodSync(f, 0o666); }
    for (const d of [home, paths.home, paths.vms, paths.templates, template.dir]) chmodSync(d, 0o777);
    chmodSync(template.memFile, 0o666); // not even a writable mode lets a VM write it: the mount is read-only
    const otherVmSock = path.join(paths.vms, 'vm-other', 'agent.sock');
    const unix = net.createServer((c) => c.destroy()); servers.push(unix);
    await new Promise<void>((r) => unix.listen(otherVmSock, r));
    chmodSync(otherVmSock, 0o777);
    const tcpAccepted: net.Socket[] = [];
    const tcp = net.createServer((c) => { tcpAccepted.push(c); c.destroy(); }); servers.push(tcp);
    await new Promise<void>((r) => tcp.listen(0, '127.0.0.1', r));
    const abstract = net.createServer((c) => { tcpAccepted.push(c); c.destroy(); }); servers.push(abstract);
    const abstractName = `\0perimeter-confine-${process.pid}`;
    await new Promise<void>((r) => abstract.listen(abstractName, r));
    const memBefore = sha256(template.memFile);

    const probeDir = tmpDir('perimeter-probe-');
    const probe = path.join(probeDir, 'probe.js');
    writeFileSync(probe, probeSource(execFileSync(vmConfig().sandbox.qemuBinary, ['--version'], { encoding: 'utf8' }).split('\n')[0]!));
    chmodSync(probe, 0o755);
    const runDir = path.join(paths.vms, `vm-${process.pid}-probe`);
    mkdirSync(runDir, { mode: 0o700 });
    const confinement = Confinement.fromConfig(config(home).sandbox);
    const jail = confinement.enter({
      id: path.basename(runDir), role: 'clone', runDir, binary: probe, kvm: false,
      readOnly: [template.image.kernel, template.image.initrd, template.image.rootfs], memFile: template.memFile,
      memoryMiB: template.manifest.memoryMiB, vcpus: template.manifest.vcpus, tcgCacheMiB: 32,
    });
    if (jail.owner) chownSync(runDir, jail.owner.uid, jail.owner.gid);
    const hostIp = Object.values(os.networkInterfaces()).flat().find((i) => i && i.family === 'IPv4' && !i.internal)?.address;
    const spec = {
      read: [...Object.values(secrets), template.stateFile, path.join(template.dir, 'template.json'), template.image.kernel, '/etc/passwd', '/proc/1/environ'],
      list: [home, paths.journal, paths.sessions, paths.vms, path.join(paths.vms, 'vm-other'), template.dir, '/proc', '/root', path.dirname(home)],
      write: [secrets.journal, secrets.control, secrets.key, template.image.rootfs, template.image.kernel],
      create: [path.join(paths.journal, 'x'), path.join(home, 'x'), path.join(template.dir, 'x'), path.join(runDir, 'own-file')],
      memFile: template.memFile, own: runDir, companionPid: process.pid,
      connect: [{ path: otherVmSock }, { path: abstractName }, { host: '127.0.0.1', port: (tcp.address() as net.AddressInfo).port },
        ...(hostIp ? [{ host: hostIp, port: (tcp.address() as net.AddressInfo).port }] : [])],
    };
    const launch = jail.command([JSON.stringify(spec)]);
    const proc = spawn(launch.cmd, launch.argv, { env: launch.env, stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
    let stderr = '';
    proc.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
    try {
      const [line, info] = await Promise.all([
        new Promise<string>((resolve, reject) => {
          let out = '';
          proc.stdout!.on('data', (d: Buffer) => { out += d.toString(); if (out.includes('\n')) resolve(out.split('\n')[0]!); });
          proc.once('exit', (code) => reject(new Error(`the probe exited (${code}): ${stderr}`)));
        }),
        new Promise<number>((resolve) => { let t = ''; (proc.stdio[3] as NodeJS.ReadableStream).on('data', (d: Buffer) => { t += d.toString(); const p = parseJailInfo(t); if (p) resolve(p); }); }),
      ]);
      const probePid = jail.vmmPid(info);
      const r = JSON.parse(line) as { uid: number; gid: number; groups: number[]; root: string[]; results: Record<string, string> };
      const res = r.results;
      // positive controls: the probe ran, and reached what it may reach
      assert.equal(res[`create ${path.join(runDir, 'own-file')}`], 'ok', 'it writes its own run directory');
      assert.equal(res[`read ${template.image.kernel}`], 'ok', 'it reads the template kernel');
      // the state directory does not exist for it
      for (const f of [...Object.values(secrets), template.stateFile, path.join(template.dir, 'template.json')]) assert.equal(res[`read ${f}`], 'ENOENT', `read ${f}: ${res[`read ${f}`]}`);
      for (const d of [paths.journal, paths.sessions, path.join(paths.vms, 'vm-other'), '/root']) assert.equal(res[`list ${d}`], 'ENOENT', `list ${d}: ${res[`list ${d}`]}`);
      assert.equal(res[`list ${home}`], 'ok: templates vms', 'of the state directory only the mount points of its own files exist');
      assert.equal(res[`list ${paths.vms}`], `ok: ${path.basename(runDir)}`, 'no other VM\'s run directory');
      assert.equal(res[`list ${template.dir}`], 'ok: initramfs.cpio mem.bin rootfs.ext4 vmlinux', 'of the template only the files QEMU opens');
      // The companion's own code (its bundle, bound read-only for the jail's launcher) shows where it shares that directory.
      const beside = [home, probeDir, path.resolve(__dirname, '../..')].filter((d) => path.dirname(d) === path.dirname(home)).map((d) => path.basename(d)).sort();
      assert.equal(res[`list ${path.dirname(home)}`], `ok: ${beside.join(' ')}`, 'nothing else of the host directory that holds the state directory');
      assert.equal(res['read /etc/passwd'], 'ENOENT');
      assert.equal(res['list /proc'], 'ENOENT', 'no /proc in the jail');
      for (const f of [secrets.journal, secrets.control, secrets.key]) assert.equal(res[`write ${f}`], 'ENOENT');
      for (const f of [template.image.rootfs, template.image.kernel]) assert.match(res[`write ${f}`]!, /^(EROFS|EACCES)$/);
      for (const c of [path.join(paths.journal, 'x'), path.join(home, 'x')]) {
        assert.match(res[`create ${c}`]!, /^(ENOENT|EACCES)$/, `create ${c}: ${res[`create ${c}`]}`);
        assert.equal(existsSync(c), false, `${c} did not appear on the host`);
      }
      assert.match(res[`create ${path.join(template.dir, 'x')}`]!, /^(EROFS|EACCES|EPERM)$/);
      // the template's memory file: no way to write, replace or remove it
      for (const a of ['open rw mem.bin', 'open wo mem.bin', 'truncate mem.bin', 'chmod mem.bin']) assert.match(res[a]!, /^(EROFS|EACCES|EPERM)$/, `${a}: ${res[a]}`);
      for (const a of ['unlink mem.bin', 'replace mem.bin']) assert.match(res[a]!, /^(EROFS|EACCES|EPERM|EBUSY|EXDEV)$/, `${a}: ${res[a]}`);
      if ('adapter: write mem.bin' in res) assert.match(res['adapter: write mem.bin']!, /^(EBADF|EROFS|EACCES)$/, 'through the adapter the file opens read-only');
      assert.equal(sha256(template.memFile), memBefore, 'mem.bin is byte-identical');
      // no way out over the network or to other processes
      assert.equal(res['signal companion'], 'ESRCH', 'the companion is not in its PID namespace');
      assert.equal(res[`connect ${otherVmSock}`], 'ENOENT');
      assert.equal(res[`connect ${abstractName}`], 'ECONNREFUSED', 'abstract sockets of the host are in another network namespace');
      for (const [k, v] of Object.entries(res).filter(([k]) => /^connect \d/.test(k))) assert.match(v, /^(ECONNREFUSED|ENETUNREACH|EHOSTUNREACH)$/, `${k}: ${v}`);
      assert.equal(tcpAccepted.length, 0, 'the host accepted no connection from it');
      const adapter = findReadonlyRamAdapter();
      const allowed = new Set(['bin', 'dev', 'etc', 'lib', 'lib32', 'lib64', 'libx32', 'sbin', 'usr', home.split('/')[1]!, probe.split('/')[1]!, ...(adapter ? [adapter.split('/')[1]!] : [])]);
      assert.deepEqual(r.root.filter((e) => !allowed.has(e)), [], `its root holds only /usr, /dev and the mount points of its files: ${r.root.join(' ')}`);
      // its identity, as the host sees it
      const st = status(probePid);
      if (process.getuid?.() === 0) {
        assert.ok(jail.owner && jail.owner.uid !== 0, 'a root companion gives the VM its own uid');
        assert.equal(r.uid, jail.owner!.uid);
        assert.equal(st.Uid!.split(/\s+/)[0], String(jail.owner!.uid));
        assert.deepEqual(r.groups, [jail.owner!.gid]);
      }
      assert.equal(st.CapEff, '0000000000000000');
      assert.equal(st.CapBnd, process.getuid?.() === 0 ? '0000000000000000' : st.CapBnd);
      assert.equal(st.NoNewPrivs, '1');
      for (const ns of ['mnt', 'pid', 'net', 'ipc', 'uts', 'cgroup']) assert.notEqual(readlinkSync(`/proc/${probePid}/ns/${ns}`), readlinkSync(`/proc/self/ns/${ns}`), `own ${ns} namespace`);
      const limits = readFileSync(`/proc/${probePid}/limits`, 'utf8');
      assert.match(limits, /Max core file size\s+0\s+0/);
      assert.match(limits, /Max open files\s+256\s+256/);
      assert.doesNotMatch(limits, /Max address space\s+unlimited/);
      const cg = readFileSync(`/proc/${probePid}/cgroup`, 'utf8');
      if (detectHostCgroup().kind !== 'none') assert.match(cg, /perimeter-vm-\d+-probe/, `in its own host cgroup: ${cg}`);
    } finally {
      if (proc.exitCode === null && proc.signalCode === null) { proc.kill(jail.stopSignal); await new Promise((r) => proc.once('exit', r)); }
      await jail.release();
      rmDir(probeDir);
    }
  });
});

describe('VM confinement: real VMs', function () {
  this.timeout(300_000);
  let home: string;
  let template: Template;
  let driver: QemuDriver;
  const opened: QemuSandbox[] = [];
  const acquire = async (sessionId = 'confine') => { const s = (await driver.acquire({ sessionId })) as QemuSandbox; opened.push(s); return s; };
  before(function () {
    skipWithoutVms(this);
    ({ home, template } = homeWithTemplate());
    driver = new QemuDriver(config(home, { maxProcesses: 128 }));
  });
  afterEach(async () => { await Promise.all(opened.splice(0).map((s) => s.destroy())); });
  after(async () => { await driver?.close(); if (home) rmDir(home); });

  it('runs QEMU as its own uid, without capabilities, under seccomp, in its own namespaces, rlimits and host cgroup', async () => {
    const s = await acquire();
    const pid = s.vm.pid;
    const st = status(pid);
    assert.match(readFileSync(`/proc/${pid}/cmdline`, 'utf8'), /qemu-system/, 'the pid is QEMU\'s own');
    if (process.getuid?.() === 0) {
      const uid = Number(st.Uid!.split(/\s+/)[0]);
      const { vmUidBase, vmUidCount } = config(home).sandbox;
      assert.ok(uid >= vmUidBase && uid < vmUidBase + vmUidCount, `uid ${uid} from the VM range`);
      assert.equal(st.Groups ?? '', '', 'no supplementary groups under TCG');
    }
    assert.equal(st.Seccomp, '2');
    assert.equal(st.NoNewPrivs, '1');
    assert.equal(st.CapEff, '0000000000000000');
    for (const ns of ['mnt', 'pid', 'net', 'ipc', 'uts', 'cgroup']) assert.notEqual(readlinkSync(`/proc/${pid}/ns/${ns}`), readlinkSync(`/proc/self/ns/${ns}`), `own ${ns} namespace`);
    assert.match(readFileSync(`/proc/${pid}/limits`, 'utf8'), /Max core file size\s+0\s+0/);
    assert.equal(readFileSync(`/proc/${pid}/environ`, 'utf8').includes('PATH='), false, 'an empty environment');
    const hostCg = detectHostCgroup();
    const cgDirs = hostCg.kind === 'v2' ? [path.join(hostCg.base, `perimeter-${s.vm.id}`)]
      : hostCg.kind === 'v1' ? [...new Set(Object.values(hostCg.bases))].map((b) => path.join(b, `perimeter-${s.vm.id}`)) : [];
    if (hostCg.kind !== 'none') {
      assert.match(readFileSync(`/proc/${pid}/cgroup`, 'utf8'), new RegExp(`perimeter-${s.vm.id}`));
      assert.ok(cgDirs.some((d) => existsSync(path.join(d, 'pids.max')) && readFileSync(path.join(d, 'pids.max'), 'utf8').trim() === '256'), 'pids.max set on the VM cgroup');
    }
    // what QEMU sees of the host: its own files only
    const root = `/proc/${pid}/root`;
    const seen = readdirSync(path.join(root, path.dirname(statePaths(home).vms)));
    assert.deepEqual(seen.sort(), ['templates', 'vms'], `of the state directory it sees only the mount points of its files: ${seen.join(' ')}`);
    assert.deepEqual(readdirSync(path.join(root, statePaths(home).vms)), [s.vm.id], 'no other VM\'s run directory');
    // the template's memory file is open read-only
    const memFd = readdirSync(`/proc/${pid}/fd`).find((fd) => { try { return readlinkSync(`/proc/${pid}/fd/${fd}`) === template.memFile; } catch { return false; } });
    assert.ok(memFd, 'QEMU holds the memory file');
    const flags = Number.parseInt(/flags:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/fdinfo/${memFd}`, 'utf8'))![1]!, 8);
    assert.equal(flags & 3, 0, 'opened O_RDONLY');
    assert.equal(text(await sh(s, 'echo confined')), 'confined\n');
    await s.destroy();
    for (const d of cgDirs) assert.equal(existsSync(d), false, `${d} removed with the VM`);
  });

  it('a clone that writes all its RAM leaves mem.bin byte-identical, and the next clone starts from the same state', async () => {
    const before = sha256(template.memFile);
    const probe = 'uname -r; ls / /tmp /workspace; cat /sys/fs/cgroup/call/pids.max; echo $((6 * 7))';
    const first = await acquire();
    const reference = text(await sh(first, probe));
    const r = await sh(first, 'echo mark > /tmp/marker; echo mark > /workspace/marker; python3 -c "b = bytearray(b\'\\xa5\') * (150 << 20); print(len(b))"', { timeoutMs: 120_000 });
    assert.equal(text(r), `${150 << 20}\n`, text(r));
    await first.destroy();
    assert.equal(sha256(template.memFile), before, 'mem.bin unchanged by the clone');
    assert.equal((readFileSync(template.memFile).length), template.manifest.files['mem.bin']!.bytes);
    const next = await acquire();
    assert.equal(text(await sh(next, probe)), reference, 'the next clone starts from the same template state');
  });

  it('a command that tries to leave its cgroup, then forks without end, is capped and killed at the end of the call', async () => {
    const s = await acquire();
    const baseline = Number(text(await sh(s, 'ls -d /proc/[0-9]* | wc -l')).trim());
    const escape = await sh(s, [
      'echo $$ > /sys/fs/cgroup/cgroup.procs 2>/dev/null; echo "move=$?"',
      'echo -pids > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; echo "controllers=$?"',
      'echo max > /sys/fs/cgroup/call/pids.max 2>/dev/null; echo "limit=$?"',
      'mount -o remount,rw /sys/fs/cgroup 2>/dev/null; echo "remount=$?"',
      'mkdir -p /tmp/cg && mount -t cgroup2 none /tmp/cg 2>/dev/null; echo "mount=$?"',
      'nsenter -t 1 -m -C true 2>/dev/null; echo "nsenter=$?"',
      'echo "cgroup=$(cat /proc/self/cgroup)"',
      'python3 -c "import os, time\nn = 0\nfor i in range(300):\n    try:\n        if os.fork() == 0: time.sleep(1000); os._exit(0)\n        n += 1\n    except OSError: pass\nprint(\'forked=%d\' % n)"',
      'read n < /sys/fs/cgroup/call/pids.current; echo "pids=$n"',
    ].join('\n'), { timeoutMs: 60_000 });
    const out = text(escape);
    for (const step of ['move', 'controllers', 'limit', 'remount', 'mount', 'nsenter']) assert.match(out, new RegExp(`^${step}=[1-9]`, 'm'), `${step} must fail:\n${out}`);
    assert.ok(Number(/^forked=(\d+)/m.exec(out)?.[1]) < 128, `the sleepers were capped by pids.max 128:\n${out}`);
    assert.ok(Number(/^pids=(\d+)/m.exec(out)?.[1]) <= 128, `capped at pids.max:\n${out}`);
    const bomb = await sh(s, 'echo $$ > /sys/fs/cgroup/cgroup.procs 2>/dev/null; :(){ :|:& };: ; sleep 3; echo done', { timeoutMs: 30_000, maxOutputBytes: 65536 });
    assert.match(text(bomb), /fork: retry|Resource temporarily unavailable|fork: Interrupted/i, text(bomb).slice(0, 300));
    const after = await sh(s, 'cat /sys/fs/cgroup/call/pids.current; ls -d /proc/[0-9]* | wc -l; grep -lx python3 /proc/[0-9]*/comm 2>/dev/null | wc -l');
    const [inCall, all, sleepers] = text(after).trim().split('\n').map(Number);
    assert.ok(inCall! <= 2, `only this command in the call cgroup: ${text(after)}`);
    assert.ok(all! <= baseline + 2, `nothing of the bomb or the sleepers survived in the VM (${all} processes, ${baseline} before)`);
    assert.equal(sleepers, 0, 'no sleeper survived the call');
  });

  it('shows no host path, key or other session in the guest\'s /proc, dmesg, /dev and /sys', async () => {
    const canary = `sk-ant-canary-${process.pid}-${Date.now()}`;
    const previous = process.env.ANTHROPIC_ENVIRONMENT_KEY;
    process.env.ANTHROPIC_ENVIRONMENT_KEY = canary;
    try {
      writeFileSync(path.join(home, 'environment.key'), canary);
      const other = await acquire('sess-other-canary');
      const s = await acquire('sess-looking');
      const patterns = [canary, home, template.dir, statePaths(home).vms, 'sess-other-canary', process.cwd()];
      await s.writeFile('/tmp/patterns', Buffer.from(`${patterns.join('\n')}\n`));
      const r = await sh(s, [
        '{ cat /proc/cmdline; dmesg; ls -laR /dev; cat /proc/mounts; for p in /proc/[0-9]*; do tr "\\0" "\\n" < $p/environ; tr "\\0" " " < $p/cmdline; echo; done; } > /tmp/seen 2>&1',
        'grep -rsI . /sys 2>/dev/null >> /tmp/seen',
        'wc -c < /tmp/seen; grep -c "Linux version" /tmp/seen; grep -F -f /tmp/patterns /tmp/seen | head -5; echo end',
      ].join('\n'), { timeoutMs: 240_000 });
      const lines = text(r).trim().split('\n');
      assert.ok(Number(lines[0]) > 20_000, `the guest's views were read (${lines[0]} bytes)`);
      assert.ok(Number(lines[1]) >= 1, 'dmesg was read');
      assert.deepEqual(lines.slice(2), ['end'], `host paths, keys or another session seen in the guest:\n${lines.slice(2).join('\n')}`);
      assert.doesNotMatch(readFileSync(`/proc/${s.vm.pid}/environ`, 'utf8'), new RegExp(canary), 'QEMU\'s environment holds no key');
      void other;
    } finally {
      if (previous === undefined) delete process.env.ANTHROPIC_ENVIRONMENT_KEY; else process.env.ANTHROPIC_ENVIRONMENT_KEY = previous;
    }
  });
});

describe('VM confinement fails closed', function () {
  this.timeout(120_000);
  before(function () { skipWithoutVms(this); });

  it('without bubblewrap the QEMU driver refuses, naming the reason and the fix', function () {
    if (process.getuid?.() !== 0) { console.log('      SKIPPED: hiding /usr/bin/bwrap needs a mount namespace (root)'); this.skip(); }
    const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', 'mount --bind /dev/null /usr/bin/bwrap && exec "$@"', 'sh', process.execPath, CLI, 'doctor', '--json'],
      { encoding: 'utf8', env: { ...process.env, PERIMETER_HOME: vmConfig().home } });
    const doc = JSON.parse(r.stdout) as { checks: Array<{ name: string; ok: boolean; detail: string; fix: string | null }>; confinement: { ok: boolean; problems: string[]; fixes: string[] } };
    const check = (n: string) => doc.checks.find((c) => c.name === n)!;
    assert.equal(doc.confinement.ok, false);
    assert.match(doc.confinement.problems.join(' '), /\/usr\/bin\/bwrap (is missing|does not run)/);
    assert.match(check('confinement').fix!, /apt-get install bubblewrap/);
    assert.equal(check('driver:qemu').ok, false, 'the QEMU driver refuses');
    assert.match(check('driver:qemu').detail, /cannot be confined.*bwrap (is missing|does not run)/);
    assert.equal(check('vm-sandbox').ok, false, 'no VM sandbox: the worker would refuse to start');
    assert.equal(r.status, 1);
  });

  it('`sandbox.confinement: "none"` runs VMs only when named, and says so loudly', async () => {
    const { home } = homeWithTemplate();
    const logged: LogRecord[] = [];
    const stop = addLogSink((l) => logged.push(l));
    setStderrLogging(false);
    const driver = new QemuDriver(config(home, { confinement: 'none' }));
    try {
      assert.match((await driver.probe()).detail, /NOT confined/);
      const s = (await driver.acquire({ sessionId: 'unconfined' })) as QemuSandbox;
      assert.equal(readlinkSync(`/proc/${s.vm.pid}/ns/mnt`), readlinkSync('/proc/self/ns/mnt'), 'no jail: the companion\'s mount namespace');
      await s.destroy();
      assert.ok(logged.some((l) => l.level === 'warn' && /UNCONFINED/.test(l.message)), 'a warning says VMs are unconfined');
    } finally { stop(); setStderrLogging(true); await driver.close(); rmDir(home); }
  });
});
