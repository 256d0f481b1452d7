// A template build that is stopped leaves nothing running and nothing half-built (the built CLI, a real mmdebstrap
// bootstrap from the Debian archive): a small template file whose build command waits silently (a quiet step keeps no
// pipe busy, so nothing but the build's own cleanup can end it) is built until that command runs, then stopped, once
// with SIGTERM to the CLI alone (`kill`, systemd) and once the way the extension's Cancel does it (TemplateCli: the
// CLI's process group). Every process of the build is gone afterwards (apt, dpkg and the command in mmdebstrap's user
// namespace too), its scratch directories are removed, and no template or root filesystem image of it is listed.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { TemplateListSchema } from '../../companion/protocol/template';
import { TemplateCli } from '../../extension/templates/templateCli';
import { CLI, rmDir, runCli, tmpDir } from '../worker/helpers';

interface Proc { pid: number; start: string; argv: string[] }

function readProc(pid: string): Proc | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (fields[0] === 'Z') return null;   // exited, not yet reaped
    return { pid: Number(pid), start: fields[19]!, argv: readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').slice(0, -1) };
  } catch { return null; }
}

function allProcs(): Array<Proc & { ppid: number }> {
  const out: Array<Proc & { ppid: number }> = [];
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    const p = readProc(pid);
    if (!p) continue;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      out.push({ ...p, ppid: Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) });
    } catch { /* gone meanwhile */ }
  }
  return out;
}

/** Every running descendant of `root`. */
function descendants(root: number): Proc[] {
  const procs = allProcs();
  const found: Proc[] = [];
  let frontier = [root];
  while (frontier.length) {
    const children = procs.filter((p) => frontier.includes(p.ppid));
    found.push(...children);
    frontier = children.map((p) => p.pid);
  }
  return found;
}

const stillRunning = (procs: Proc[]) => procs.filter((p) => readProc(String(p.pid))?.start === p.start);

async function eventually(done: () => boolean, what: () => string, tries = 600): Promise<void> {
  for (let i = 0; i < tries && !done(); i++) await new Promise((r) => setTimeout(r, 500));
  assert.ok(done(), what());
}

describe('a stopped template build (built CLI, real mmdebstrap)', function () {
  this.timeout(30 * 60_000);
  let dir: string;
  const leftovers: Proc[] = [];
  before(() => { dir = tmpDir('perimeter-template-cancel-'); });
  after(() => {
    for (const p of stillRunning(leftovers)) { try { process.kill(p.pid, 'SIGKILL'); } catch { /* gone */ } }
    if (dir) rmDir(dir);
  });

  /** A fresh state directory and a template file whose build command waits for `marker` seconds without output. */
  function project(name: string, marker: string): { home: string; file: string } {
    const home = path.join(dir, `home-${name}`);
    mkdirSync(home);
    const file = path.join(dir, `${name}.template.yaml`);
    writeFileSync(file, `name: ${name}\nkernel: debian\ncommands:\n  - sleep ${marker}\n`);
    return { home, file };
  }

  /** Waits until the build runs its command, then returns every process of the build and its scratch paths. */
  async function whenCommandRuns(cliPid: number, marker: string): Promise<{ procs: Proc[]; scratch: string[] }> {
    let procs: Proc[] = [];
    await eventually(() => { procs = descendants(cliPid); return procs.some((p) => p.argv.join(' ') === `sleep ${marker}`); },
      () => `the build command never ran; processes of the build: ${procs.map((p) => p.argv.slice(0, 3).join(' ')).join('; ')}`, 3600);
    leftovers.push(...procs);
    const scratch = new Set<string>();
    for (const p of procs) {
      for (const a of p.argv) for (const m of a.matchAll(/\/(?:tmp|var\/tmp)\/perimeter-(?:mmdebstrap|unpack)-[A-Za-z0-9-]+/g)) scratch.add(m[0]);
    }
    return { procs, scratch: [...scratch] };
  }

  async function assertNothingLeft(home: string, build: { procs: Proc[]; scratch: string[] }, marker: string): Promise<void> {
    await eventually(() => stillRunning(build.procs).length === 0,
      () => `still running: ${stillRunning(build.procs).map((p) => `${p.pid} ${p.argv.slice(0, 3).join(' ')}`).join('; ')}`);
    assert.ok(!allProcs().some((p) => p.argv.join(' ') === `sleep ${marker}`), 'the build command is gone');
    assert.ok(build.scratch.some((s) => s.includes('perimeter-mmdebstrap-root-')), `mmdebstrap's root was seen: ${build.scratch.join(', ')}`);
    await eventually(() => build.scratch.every((s) => !existsSync(s)), () => `scratch left: ${build.scratch.filter((s) => existsSync(s)).join(', ')}`);
    const ls = runCli(['template', 'ls', '--json', '--home', home]);
    assert.equal((await ls.exit).code, 0, ls.stderr());
    assert.deepEqual(TemplateListSchema.parse(JSON.parse(ls.stdout())), [], 'no template is listed');
    const templates = path.join(home, 'templates');
    assert.deepEqual(existsSync(templates) ? readdirSync(templates) : [], [], 'no partial template directory');
    const images = path.join(home, 'cache', 'rootfs-image');
    const imageFiles = existsSync(images) ? readdirSync(images, { recursive: true }).map(String).filter((f) => f.endsWith('.ext4') || f.includes('.ext4.')) : [];
    assert.deepEqual(imageFiles, [], 'no root filesystem image, complete or partial');
  }

  it('SIGTERM to the CLI ends mmdebstrap and everything it started, and keeps nothing of the build', async () => {
    const marker = String(700000 + Math.floor(Math.random() * 90000));
    const { home, file } = project('cancel-sigterm', marker);
    const cli = spawn(process.execPath, [CLI, 'template', 'build', '-f', file, '--home', home], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    cli.stdout.on('data', (d) => { stdout += d; });
    cli.stderr.on('data', (d) => { stderr += d; });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => cli.once('exit', (code, signal) => resolve({ code, signal })));
    const build = await whenCommandRuns(cli.pid!, marker);
    assert.match(stdout, /rootfs: mmdebstrap --mode=unshare/);
    process.kill(cli.pid!, 'SIGTERM');   // the CLI alone, as `kill` or a service manager does
    const status = await exited;
    await assertNothingLeft(home, build, marker);
    assert.deepEqual(status, { code: 143, signal: null }, stderr);
    assert.match(stderr, /build stopped by SIGTERM/);
  });

  it('the extension\'s Cancel ends the build the same way', async () => {
    const marker = String(800000 + Math.floor(Math.random() * 90000));
    const { home, file } = project('cancel-extension', marker);
    const abort = new AbortController();
    const templates = new TemplateCli({ bundle: CLI, home });
    let build: { procs: Proc[]; scratch: string[] } | null = null;
    const outcome = templates.build(file, () => {}, abort.signal);
    // the CLI is the one node process running the bundle for this home
    let cliPid = 0;
    await eventually(() => { cliPid = allProcs().find((p) => p.argv.includes(CLI) && p.argv.includes(home))?.pid ?? 0; return cliPid > 0; }, () => 'the CLI started');
    build = await whenCommandRuns(cliPid, marker);
    abort.abort();
    const r = await outcome;
    assert.equal(r.cancelled, true);
    await assertNothingLeft(home, build, marker);
  });
});
