// The parts of VM confinement that need no VM: how the host's cgroups are found (mountinfo and /proc/self/cgroup of
// v2-delegated, v1 and namespaced hosts, on fake trees), what a VM cgroup is created with and what the sweep removes,
// the QEMU version rule for a read-only memory backend, the jail's info record, the report under `confinement:
// "none"`, and the read-only RAM adapter on a real process (a read-write open of the named file comes back read-only,
// a private writable mapping of it still works and never reaches the file; other files are untouched).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { detectHostCgroup, parseMountinfo, parseProcCgroup, sweepCgroups, VmCgroup } from '../../companion/sandbox/qemu/cgroup';
import { Confinement, findReadonlyRamAdapter, hasRomOff, parseJailInfo } from '../../companion/sandbox/qemu/confine';
import { rmDir, tmpDir } from '../worker/helpers';

/** A fake /proc/self (mountinfo + cgroup) whose mount points live under `root`. */
function fakeProc(root: string, mounts: string[], cgroup: string[]): string {
  const proc = path.join(root, 'proc');
  mkdirSync(proc, { recursive: true });
  writeFileSync(path.join(proc, 'mountinfo'), `${mounts.join('\n')}\n`);
  writeFileSync(path.join(proc, 'cgroup'), `${cgroup.join('\n')}\n`);
  return proc;
}
const mountLine = (id: number, root: string, point: string, fstype: string, superOpts: string) => `${id} 1 0:${id} ${root} ${point} rw,nosuid - ${fstype} ${fstype} ${superOpts}`;
function dir(p: string, files: Record<string, string> = {}): string {
  mkdirSync(p, { recursive: true });
  for (const [f, v] of Object.entries(files)) writeFileSync(path.join(p, f), v);
  return p;
}

describe('host cgroups for VMs', () => {
  let root: string;
  beforeEach(() => { root = tmpDir('perimeter-cg-'); });
  afterEach(() => rmDir(root));

  it('parses mountinfo (escaped paths, optional fields) and /proc/self/cgroup (v1 lines and the v2 line)', () => {
    const m = parseMountinfo('36 35 98:0 /mnt1 /mnt\\040point rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:7 - cgroup2 cgroup2 rw,nsdelegate\n');
    assert.deepEqual(m[0], { root: '/mnt1', point: '/mnt point', fstype: 'ext3', superOpts: ['rw', 'errors=continue'] });
    assert.equal(m[1]!.fstype, 'cgroup2');
    const c = parseProcCgroup('4:memory:/a/b\n1:cpu,cpuacct:/\n0::/user.slice/x.service\n');
    assert.equal(c.get('memory'), '/a/b');
    assert.equal(c.get('cpu'), '/');
    assert.equal(c.get('cpuacct'), '/');
    assert.equal(c.get(''), '/user.slice/x.service');
  });

  it('uses a delegated cgroup v2 subtree: the companion\'s own cgroup with cpu, memory and pids available', () => {
    const cg2 = dir(path.join(root, 'cg2'));
    const svc = dir(path.join(cg2, 'system.slice', 'perimeter.service'), { 'cgroup.controllers': 'cpuset cpu io memory pids\n', 'cgroup.subtree_control': '', 'cgroup.procs': `${process.pid}\n` });
    const proc = fakeProc(root, [mountLine(30, '/', cg2, 'cgroup2', 'rw,nsdelegate')], ['0::/system.slice/perimeter.service']);
    const s = detectHostCgroup(proc);
    assert.equal(s.kind, 'v2');
    assert.equal(s.kind === 'v2' && s.base, svc);
    const vm = VmCgroup.create(s as Exclude<typeof s, { kind: 'none' }>, `vm-${process.pid}-abc`, { cpuCores: 1.5, memoryBytes: 512 << 20, pids: 256 });
    const vmDir = path.join(svc, `perimeter-vm-${process.pid}-abc`);
    assert.deepEqual(vm.procsFiles, [path.join(vmDir, 'cgroup.procs')]);
    assert.equal(readFileSync(path.join(vmDir, 'cpu.max'), 'utf8'), '150000 100000');
    assert.equal(readFileSync(path.join(vmDir, 'memory.max'), 'utf8'), String(512 << 20));
    assert.equal(readFileSync(path.join(vmDir, 'pids.max'), 'utf8'), '256');
    assert.equal(readFileSync(path.join(svc, 'cgroup.subtree_control'), 'utf8'), '+cpu +memory +pids', 'the controllers are enabled for the VM cgroups');
  });

  it('says why when the v2 cgroup has no controllers delegated, and falls back to writable v1 hierarchies', () => {
    const cg2 = dir(path.join(root, 'unified'), { 'cgroup.controllers': 'hugetlb\n' });
    const cpu = dir(path.join(root, 'cpu')), mem = dir(path.join(root, 'memory', 'job', '7')), pids = dir(path.join(root, 'pids'));
    const mounts = [mountLine(41, '/', cg2, 'cgroup2', 'rw'), mountLine(32, '/', cpu, 'cgroup', 'rw,cpu,cpuacct'),
      mountLine(35, '/', path.join(root, 'memory'), 'cgroup', 'rw,memory'), mountLine(39, '/', pids, 'cgroup', 'rw,pids')];
    const none = detectHostCgroup(fakeProc(root, mounts.slice(0, 1), ['0::/']));
    assert.equal(none.kind, 'none');
    assert.match(none.kind === 'none' ? none.reason : '', /has no cpu\/memory\/pids controllers delegated \(it offers: hugetlb\)/);
    assert.match(none.kind === 'none' ? none.fix : '', /Delegate=yes/);
    const v1 = detectHostCgroup(fakeProc(root, mounts, ['8:pids:/', '4:memory:/job/7', '1:cpu,cpuacct:/', '0::/']));
    assert.equal(v1.kind, 'v1');
    assert.deepEqual(v1.kind === 'v1' && v1.bases, { cpu, memory: mem, pids });
    const vm = VmCgroup.create(v1 as Exclude<typeof v1, { kind: 'none' }>, `vm-${process.pid}-v1`, { cpuCores: 1.5, memoryBytes: 1 << 30, pids: 64 });
    assert.equal(vm.procsFiles.length, 3, 'the launcher joins all three hierarchies');
    const name = `perimeter-vm-${process.pid}-v1`;
    assert.equal(readFileSync(path.join(cpu, name, 'cpu.cfs_quota_us'), 'utf8'), '150000');
    assert.equal(readFileSync(path.join(mem, name, 'memory.limit_in_bytes'), 'utf8'), String(1 << 30));
    assert.equal(readFileSync(path.join(pids, name, 'pids.max'), 'utf8'), '64');
  });

  it('maps a cgroup path through a mount whose root is not / (a cgroup namespace or a bind of a subtree)', () => {
    const point = dir(path.join(root, 'ns'));
    const mine = dir(path.join(point, 'job'), { 'cgroup.controllers': 'cpu memory pids' });
    const s = detectHostCgroup(fakeProc(root, [mountLine(50, '/container', point, 'cgroup2', 'rw')], ['0::/container/job']));
    assert.equal(s.kind === 'v2' && s.base, mine);
    const outside = detectHostCgroup(fakeProc(root, [mountLine(50, '/container', point, 'cgroup2', 'rw')], ['0::/elsewhere']));
    assert.match(outside.kind === 'none' ? outside.reason : '', /outside the cgroup2 mount/);
  });

  it('sweeps VM cgroups of dead companions only', () => {
    const base = dir(path.join(root, 'svc'), { 'cgroup.controllers': 'cpu memory pids' });
    const dead = dir(path.join(base, 'perimeter-vm-999999-dead'));
    const live = dir(path.join(base, 'perimeter-vm-12345-live'));
    const mine = dir(path.join(base, `perimeter-vm-${process.pid}-mine`));
    const other = dir(path.join(base, 'system-thing'));
    const removed = sweepCgroups({ kind: 'v2', base, detail: '' }, (pid) => pid === 12345);
    assert.equal(removed, 1);
    assert.equal(existsSync(dead), false);
    for (const kept of [live, mine, other]) assert.ok(existsSync(kept), kept);
  });
});

describe('confinement rules', () => {
  it('uses QEMU\'s own read-only memory backend from 8.2 on', () => {
    assert.equal(hasRomOff('QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)'), false);
    assert.equal(hasRomOff('QEMU emulator version 8.1.5'), false);
    assert.equal(hasRomOff('QEMU emulator version 8.2.0'), true);
    assert.equal(hasRomOff('QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)'), true);
    assert.equal(hasRomOff('not a version'), false);
  });

  it('reads QEMU\'s host pid from the jail\'s info record, only once it is complete', () => {
    const info = '{\n    "child-pid": 4242,\n    "mnt-namespace": 4026532174\n}\n';
    assert.equal(parseJailInfo(info.slice(0, 20)), null);
    assert.equal(parseJailInfo(info), 4242);
    assert.equal(parseJailInfo('{"child-pid": -1}'), null);
  });

  it('reports what an unconfined VM gets as a problem with its fix', () => {
    const r = new Confinement({ confinement: 'none', vmUidBase: 0x70000000, vmUidCount: 16, hostCgroup: 'auto' }).report('QEMU emulator version 7.2.22');
    assert.equal(r.mode, 'none');
    assert.deepEqual(r.namespaces, []);
    assert.match(r.problems.join(' '), /QEMU runs as the companion's user and sees the companion's whole filesystem/);
    assert.match(r.fixes.join(' '), /sandbox\.confinement/);
  });
});

describe('the read-only RAM adapter (QEMU < 8.2)', function () {
  let dirPath: string;
  before(function () {
    if (!findReadonlyRamAdapter()) { console.log('      SKIPPED: dist/guest/perimeter-readonly-ram.so is not built (npm run build with gcc)'); this.skip(); }
  });
  beforeEach(() => { dirPath = tmpDir('perimeter-ramro-'); });
  afterEach(() => rmDir(dirPath));

  it('turns a read-write open of the named file into a read-only one; a private writable mapping still works', () => {
    const ram = path.join(dirPath, 'mem.bin');
    const other = path.join(dirPath, 'other.bin');
    writeFileSync(ram, Buffer.alloc(8192, 0x11));
    writeFileSync(other, Buffer.alloc(16, 0x22));
    const script = [
      'import mmap, os, sys, fcntl',
      'ram, other = sys.argv[1], sys.argv[2]',
      'fd = os.open(ram, os.O_RDWR)',
      'print("ram", "rdonly" if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY else "rdwr")',
      'try:\n    os.write(fd, b"x"); print("write ok")\nexcept OSError as e:\n    print("write", e.errno)',
      'm = mmap.mmap(fd, 8192, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)',
      'm[0:4] = b"\\xa5\\xa5\\xa5\\xa5"; print("private", m[0:2].hex())',
      'o = os.open(other, os.O_RDWR)',
      'print("other", "rdonly" if fcntl.fcntl(o, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY else "rdwr")',
    ].join('\n');
    const run = (env: Record<string, string>) => spawnSync('python3', ['-c', script, ram, other], { encoding: 'utf8', env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env } });
    const plain = run({});
    assert.match(plain.stdout, /^ram rdwr$/m, `without the adapter the file opens read-write: ${plain.stdout}${plain.stderr}`);
    assert.match(plain.stdout, /^write ok$/m);
    writeFileSync(ram, Buffer.alloc(8192, 0x11));
    const r = run({ LD_PRELOAD: findReadonlyRamAdapter()!, PERIMETER_READONLY_RAM: ram });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^ram rdonly$/m);
    assert.match(r.stdout, /^write 9$/m, 'a write through the descriptor fails (EBADF)');
    assert.match(r.stdout, /^private a5a5$/m, 'the private mapping is writable');
    assert.match(r.stdout, /^other rdwr$/m, 'other files open as asked');
    assert.deepEqual(readFileSync(ram), Buffer.alloc(8192, 0x11), 'nothing reached the file');
  });
});
