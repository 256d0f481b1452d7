// Templates from container images, with no container daemon (built CLI, real VMs): the test makes an image of its
// own from this machine's busybox-static and bash (with its libraries), in two layers whose second removes a file
// (whiteout), hides a directory's lower content (opaque), adds a hardlink and sets Env and WorkingDir in the config;
// it writes it as an OCI image layout archive and as a `docker save` archive, builds a template from each
// (`perimeter template build --from-image FILE --name NAME`) and runs sessions in them (`perimeter demo --scenario`):
// the layers' result, the image's environment and working directory, and the tools (bash, write, read) all work.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { craftDockerSave, craftOciLayout, craftTar, type CraftEntry } from '../unit/fixtures/tar-craft';
import { skipWithoutVms, vmConfig } from './helpers';
import { rmDir, runCli, tmpDir } from '../worker/helpers';

const DemoReport = z.object({ ok: z.boolean(), calls: z.array(z.object({ label: z.string(), ok: z.boolean(), reason: z.string().nullable() })) });
const APPLETS = ['cat', 'ls', 'stat', 'head', 'tail', 'sed', 'grep', 'mkdir', 'rm', 'cp', 'mv', 'env', 'sleep', 'echo', 'wc', 'sort', 'find', 'tr', 'id', 'mktemp', 'touch', 'chmod', 'readlink', 'dirname', 'basename', 'uname'];

async function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const c = runCli(args);
  const { code } = await c.exit;
  return { code, stdout: c.stdout(), stderr: c.stderr() };
}

/** The lower layer: busybox with its applets, bash and the libraries it loads, a few files the upper layer changes. */
function lowerLayer(): Buffer {
  const entries: CraftEntry[] = [{ name: 'bin/', type: 'dir' }, { name: 'bin/busybox', data: readFileSync('/bin/busybox'), mode: 0o755 },
    { name: 'bin/sh', type: 'symlink', link: 'busybox' }, { name: 'bin/bash', data: readFileSync('/bin/bash'), mode: 0o755 }];
  for (const a of APPLETS) entries.push({ name: `bin/${a}`, type: 'symlink', link: 'busybox' });
  const libs = execFileSync('ldd', ['/bin/bash'], { encoding: 'utf8' }).split('\n').map((l) => /(\/\S+) \(0x/.exec(l)?.[1]).filter((p): p is string => !!p);
  const dirs = new Set<string>();
  for (const lib of libs) {
    const rel = lib.slice(1);
    for (let d = path.posix.dirname(rel); d !== '.' && !dirs.has(d); d = path.posix.dirname(d)) dirs.add(d);
    entries.push({ name: rel, data: readFileSync(realpathSync(lib)), mode: 0o755 });
  }
  entries.unshift(...[...dirs].sort().map((d) => ({ name: `${d}/`, type: 'dir' as const })));
  entries.push({ name: 'usr/', type: 'dir' }, { name: 'usr/bin', type: 'symlink', link: '/bin' },
    { name: 'a/', type: 'dir' }, { name: 'a/keep', data: 'kept from the lower layer\n' }, { name: 'a/gone', data: 'x' },
    { name: 'o/', type: 'dir' }, { name: 'o/old', data: 'x' }, { name: 'h1', data: 'linked\n' }, { name: 'del', data: 'x' });
  return craftTar(entries);
}

function upperLayer(): Buffer {
  return craftTar([
    { name: 'a/.wh.gone' }, { name: 'o/.wh..wh..opq' }, { name: 'o/new', data: 'x' }, { name: '.wh.del' },
    { name: 'h2', type: 'hardlink', link: 'h1' }, { name: 'srv/', type: 'dir' }, { name: 'srv/work/', type: 'dir' },
  ]);
}

describe('templates from OCI and docker save archives (built CLI, real VMs)', function () {
  this.timeout(30 * 60_000);
  let dir: string;
  let home: string;
  before(function () {
    skipWithoutVms(this);
    if (!existsSync('/bin/busybox')) { console.log('      SKIPPED: busybox-static is not installed (apt-get install busybox-static)'); this.skip(); }
    dir = tmpDir('perimeter-image-');
    home = path.join(dir, 'home');
    mkdirSync(home);
    mkdirSync(path.join(home, 'cache'));
    symlinkSync(path.join(vmConfig().home, 'cache', 'kernel'), path.join(home, 'cache', 'kernel'));
  });
  after(() => { if (dir) rmDir(dir); });

  it('builds a template from each archive and runs sessions in them', async () => {
    const image = { layers: [lowerLayer(), upperLayer()], env: ['PATH=/bin', 'IMAGE_VAR=set by the image config'], workdir: '/srv/work' };
    writeFileSync(path.join(dir, 'oci.tar'), craftOciLayout(image));
    writeFileSync(path.join(dir, 'docker.tar'), craftDockerSave(image));
    for (const [name, file] of [['from-oci', 'oci.tar'], ['from-docker', 'docker.tar']]) {
      const r = await cli(['template', 'build', '--from-image', path.join(dir, file!), '--name', name!, '--home', home]);
      assert.equal(r.code, 0, `${name}: ${r.stdout}\n${r.stderr}`);
      assert.match(r.stdout, new RegExp(`template: "${name}" is [0-9a-f]+`));
      const inspect = JSON.parse((await cli(['template', 'inspect', name!, '--json', '--home', home])).stdout) as { env: Record<string, string>; workdir: string; rootfsSource: string };
      assert.equal(inspect.env.IMAGE_VAR, 'set by the image config');
      assert.equal(inspect.workdir, '/srv/work');
      assert.match(inspect.rootfsSource, /2 layers/);
    }
    for (const name of ['from-oci', 'from-docker']) {
      const f = path.join(dir, `${name}.json`);
      writeFileSync(f, JSON.stringify({ name, metadata: { 'perimeter.template': name }, steps: [
        { label: 'layers applied', tool: 'bash', input: { command: 'cat /a/keep; ls /a /o; [ -e /del ] || echo del-removed; stat -c "links=%h" /h1; echo "IMAGE_VAR=$IMAGE_VAR"; pwd' },
          expectIncludes: ['kept from the lower layer', 'keep\n', 'new\n', 'del-removed', 'links=2', 'IMAGE_VAR=set by the image config', '/srv/work'], expectExcludes: ['gone', 'old'] },
        { label: 'write', tool: 'write', input: { file_path: 'notes.txt', content: 'written in an image template\n' }, expectIncludes: ['wrote'] },
        { label: 'read back', tool: 'read', input: { file_path: 'notes.txt' }, expectIncludes: ['written in an image template'] },
      ] }));
      const r = await cli(['demo', '--json', '--driver', 'qemu', '--scenario', f, '--home', home]);
      let report;
      try { report = DemoReport.parse(JSON.parse(r.stdout)); } catch { assert.fail(`demo printed no report (exit ${r.code}):\n${r.stdout}\n${r.stderr}`); }
      assert.deepEqual(report.calls.filter((c) => !c.ok).map((c) => `${c.label}: ${c.reason}`), [], r.stderr);
    }
  });
});
