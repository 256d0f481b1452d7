// The programs a template build runs (sandbox/template/build-tools.ts): one that cannot be started fails the build
// with its name and the package to install (the built CLI too: exit 1 and one line, never the crash status 70), each
// runs in its own process group that ending the build kills whole, and what the build writes is removed when its
// process exits early, or by the next build when it was killed outright.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { findProgram, startHelper, sweepDeadBuilds } from '../../companion/sandbox/template/build-tools';
import { EXIT_CRASHED } from '../../companion/process-guards';

const ROOT = path.resolve(__dirname, '../..');

/** Pids of running processes whose command line is exactly `argv`. */
function processesRunning(argv: string[]): number[] {
  const want = `${argv.join('\0')}\0`;
  const out: number[] = [];
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, 'utf8') !== want) continue;
      if (/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'))) continue;   // exited, not yet reaped
      out.push(Number(pid));
    } catch { /* gone meanwhile */ }
  }
  return out;
}

/** Waits until `done()` holds (processes die and detached removals finish a moment after the signal). */
async function eventually(done: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 300 && !done(); i++) await new Promise((r) => setTimeout(r, 100));
  assert.ok(done(), what);
}

describe('template build tools', () => {
  let dir: string;
  beforeEach(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'tpl-tools-')); });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const script = (name: string, text: string) => { const f = path.join(dir, name); writeFileSync(f, text); chmodSync(f, 0o755); return f; };

  it('a program that cannot be started is named with the package that provides it', async () => {
    const empty = mkdtempSync(path.join(dir, 'bin-'));
    assert.throws(() => startHelper('mmdebstrap', [], { env: { PATH: empty } }),
      { code: 'build_tool_missing', message: 'the template build cannot start mmdebstrap: not found on PATH (fix: sudo apt-get install mmdebstrap)' });
    assert.throws(() => startHelper('make', [], { env: { PATH: empty }, nice: true }), /cannot start make: not found on PATH \(fix: sudo apt-get install build-essential\)/);
    mkdirSync(path.join(empty, 'lz4'));   // a directory is not a program
    assert.equal(findProgram('lz4', empty), null);
    // on PATH, but its interpreter is missing: the start fails (directly, and under nice) with the same kind of error
    const broken = script('mmdebstrap', '#!/nonexistent/perl\n');
    await assert.rejects(startHelper(broken, [], { env: { PATH: dir } }).exited, /cannot start mmdebstrap: ENOENT \(fix: sudo apt-get install mmdebstrap\)/);
    const nice = findProgram('nice', process.env.PATH ?? '');
    assert.ok(nice, 'nice (coreutils) is on PATH');
    await assert.rejects(startHelper('mmdebstrap', [], { env: { PATH: `${dir}:${path.dirname(nice)}` }, nice: true }).exited,
      /cannot start mmdebstrap: it or its interpreter is missing \(fix: sudo apt-get install mmdebstrap\)/);
  });

  it('ending a program ends everything it started (its process group)', async () => {
    const marker = String(900000 + Math.floor(Math.random() * 90000));
    const h = startHelper('sh', ['-c', `sleep ${marker} & sleep ${marker} & wait`], { stdio: 'ignore' });
    await eventually(() => processesRunning(['sleep', marker]).length === 2, 'both children started');
    h.end();
    const { signal } = await h.exited;
    assert.equal(signal, 'SIGKILL');
    await eventually(() => processesRunning(['sleep', marker]).length === 0, 'no child of the ended program is left');
  });

  it('a process that exits mid-build ends its programs and removes its partial outputs', async () => {
    const marker = String(900000 + Math.floor(Math.random() * 90000));
    const partial = path.join(dir, 'partial-work');
    const main = path.join(dir, 'main.ts');
    writeFileSync(main, [
      `import { mkdirSync, writeFileSync } from 'node:fs';`,
      `import { startHelper, trackPartial } from ${JSON.stringify(path.join(ROOT, 'companion/sandbox/template/build-tools.ts'))};`,
      `trackPartial(${JSON.stringify(partial)});`,
      `mkdirSync(${JSON.stringify(path.join(partial, 'sub'))}, { recursive: true });`,
      `writeFileSync(${JSON.stringify(path.join(partial, 'sub', 'half-written'))}, 'x');`,
      `startHelper('sh', ['-c', 'sleep ${marker} & sleep ${marker} & wait'], { stdio: 'ignore' });`,
      `process.stdout.write('started\\n');`,
      `process.stdin.on('end', () => process.exit(3)).resume();`,
    ].join('\n'));
    const child = spawn(process.execPath, ['--import', 'tsx', main], { cwd: ROOT, stdio: ['pipe', 'pipe', 'inherit'] });
    await new Promise<void>((resolve) => child.stdout.on('data', (d: Buffer) => { if (d.toString().includes('started')) resolve(); }));
    await eventually(() => processesRunning(['sleep', marker]).length === 2, 'the helper runs');
    assert.ok(existsSync(partial));
    child.stdin.end();
    const code = await new Promise((resolve) => child.once('exit', resolve));
    assert.equal(code, 3);
    await eventually(() => processesRunning(['sleep', marker]).length === 0, 'the helper group went with the process');
    await eventually(() => !existsSync(partial), 'the partial output is removed');
  });

  it('the next build removes what a killed build left, never a running one\'s', async () => {
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
    const deadPid = Number(dead.stdout);
    for (const n of [`.build-${deadPid}-abc123`, `.build-${process.pid}-abc123`, `.build-1-abc123`, 'names']) mkdirSync(path.join(dir, n));
    const removed = sweepDeadBuilds(dir, /^\.build-(\d+)-[0-9a-f]+$/);
    assert.deepEqual(removed, [`.build-${deadPid}-abc123`]);
    assert.deepEqual(readdirSync(dir).sort(), [`.build-${process.pid}-abc123`, '.build-1-abc123', 'names'].sort());
  });

  describe('`perimeter template build` (built CLI)', () => {
    /** Builds a Debian template from a small template file with PATH = a directory holding `programs` (links to
     *  this host's, or scripts), in a fresh state directory. */
    function build(programs: Record<string, string | null>, tmp = dir): { status: number | null; stdout: string; stderr: string } {
      if (!existsSync(path.join(ROOT, 'dist', 'perimeter.js'))) throw new Error('dist/perimeter.js is missing: build first (node scripts/build.mjs)');
      const bin = mkdtempSync(path.join(dir, 'bin-'));
      for (const [name, text] of Object.entries(programs)) {
        if (text !== null) { writeFileSync(path.join(bin, name), text); chmodSync(path.join(bin, name), 0o755); continue; }
        const host = findProgram(name, process.env.PATH ?? '');
        if (host) symlinkSync(host, path.join(bin, name));
      }
      const qemu = findProgram('qemu-system-x86_64', process.env.PATH ?? '') ?? '/usr/bin/qemu-system-x86_64';
      const home = mkdtempSync(path.join(dir, 'home-'));
      writeFileSync(path.join(home, 'config.json'), JSON.stringify({ sandbox: { qemuBinary: qemu, confinement: 'none' } }));
      const file = path.join(dir, 'perimeter.template.yaml');
      writeFileSync(file, 'name: tools-test\nkernel: debian\ncommands:\n  - echo never runs\n');
      const r = spawnSync(process.execPath, [path.join(ROOT, 'dist', 'perimeter.js'), 'template', 'build', '-f', file, '--home', home],
        { env: { PATH: bin, HOME: dir, TMPDIR: tmp }, encoding: 'utf8', timeout: 120_000 });
      return { status: r.status, stdout: r.stdout, stderr: r.stderr };
    }
    const uidMaps = { newuidmap: null, newgidmap: null };

    it('without nice, or with an mmdebstrap that cannot run, fails with one line naming it and the fix (exit 1, not a crash)', async function () {
      this.timeout(240_000);
      const noNice = build({ mmdebstrap: null, ...uidMaps });
      assert.notEqual(noNice.status, EXIT_CRASHED, noNice.stderr);
      assert.equal(noNice.status, 1, noNice.stderr);
      assert.match(noNice.stderr, /^perimeter template: cannot build a template on this host: nice is missing \(fix: sudo apt-get install coreutils\)\n$/);
      // what a killed bootstrap left in the temporary directory goes when the next one starts; the failed one's own too
      const tmp = mkdtempSync(path.join(dir, 'tmp-'));
      const deadPid = Number(spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout);
      mkdirSync(path.join(tmp, `perimeter-mmdebstrap-root-${deadPid}-AbC123`, 'half-bootstrapped'), { recursive: true });
      const broken = build({ mmdebstrap: '#!/nonexistent/perl\n', nice: null, ...uidMaps }, tmp);
      assert.equal(broken.status, 1, broken.stderr);
      await eventually(() => readdirSync(tmp).length === 0, `left in the temporary directory: ${readdirSync(tmp).join(', ')}`);
      assert.match(broken.stdout, /rootfs: mmdebstrap --mode=unshare/, 'the bootstrap was started');
      assert.equal(broken.stderr, 'perimeter template: the template build cannot start mmdebstrap: it or its interpreter is missing (fix: sudo apt-get install mmdebstrap)\n');
    });
  });
});
