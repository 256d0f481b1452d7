// Templates for real work, the way a user makes and uses them (the built CLI, real VMs): the built-in `minimal`
// template and one built from a template file in a project directory (an extra Debian package, a copied file, a
// build-time command, an environment and a working directory), a rebuild of the unchanged file answered from the
// cache without booting, both listed side by side; then sessions (`perimeter demo --scenario`) in the template their
// `perimeter.template` metadata names, in the default one without it, and refused with a clear result for an unknown
// one; then the warm pools per template (one used template gets one ready VM beside the default's two, and the
// most used is served first when the memory budget is short). The state directory is fresh; its cache links to this machine's (kernel and root filesystem images are cached
// by content, so only the first run on a machine bootstraps Debian).
import assert from 'node:assert/strict';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { TemplateListSchema } from '../../companion/protocol/template';
import { loadConfig } from '../../companion/config';
import { setStderrLogging } from '../../companion/log';
import { findTemplate } from '../../companion/sandbox/template/manifest';
import { QemuTemplatePools } from '../../companion/sandbox/qemu/template-pools';
import { skipWithoutVms, vmConfig } from './helpers';
import { rmDir, runCli, tmpDir } from '../worker/helpers';

const DemoReport = z.object({ ok: z.boolean(), calls: z.array(z.object({ label: z.string(), ok: z.boolean(), reason: z.string().nullable() })) });

async function cli(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const c = runCli(args, env);
  const { code } = await c.exit;
  return { code, stdout: c.stdout(), stderr: c.stderr() };
}

describe('templates from a file, chosen per session (built CLI, real VMs)', function () {
  this.timeout(60 * 60_000);
  let dir: string;
  let home: string;
  before(function () {
    skipWithoutVms(this);
    setStderrLogging(process.env.PERIMETER_TEST_LOGS === '1');
    dir = tmpDir('perimeter-templates-');
    home = path.join(dir, 'home');
    mkdirSync(home);
    symlinkSync(path.join(vmConfig().home, 'cache'), path.join(home, 'cache'));
  });
  after(() => { setStderrLogging(true); if (dir) rmDir(dir); });

  const project = () => {
    const p = path.join(dir, 'project');
    mkdirSync(path.join(p, 'tools'), { recursive: true });
    writeFileSync(path.join(p, 'tools', 'hello.txt'), 'copied from the project\n');
    writeFileSync(path.join(p, 'perimeter.template.yaml'), [
      'name: node-tools',
      'packages: [nodejs]',
      'files:',
      '  - { from: tools/hello.txt, to: /opt/tools/hello.txt }',
      'commands:',
      '  - echo "made by a build command for $TEAM" > /etc/built-by-command',
      'env:',
      '  TEAM: platform',
      'workdir: /srv/app',
      'memoryMiB: 384',
    ].join('\n'));
    return path.join(p, 'perimeter.template.yaml');
  };

  it('builds the minimal template and one from a template file, and rebuilds the unchanged file from the cache', async () => {
    const minimal = await cli(['template', 'build', 'minimal', '--home', home]);
    assert.equal(minimal.code, 0, minimal.stderr);
    assert.match(minimal.stdout, /template: "minimal" is [0-9a-f]+ \(the default\)/);
    const file = project();
    const built = await cli(['template', 'build', '-f', file, '--home', home]);
    assert.equal(built.code, 0, built.stderr);
    assert.match(built.stdout, /template: "node-tools" is [0-9a-f]+\n/, 'not the default: one exists already');
    const again = await cli(['template', 'build', '-f', file, '--home', home]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /rootfs: cached image/);
    assert.match(again.stdout, /template: already built/);
    assert.doesNotMatch(again.stdout, /^(boot|snapshot|rootfs: mmdebstrap):/m, 'nothing was bootstrapped or booted again');
    const ls = await cli(['template', 'ls', '--json', '--home', home]);
    const rows = TemplateListSchema.parse(JSON.parse(ls.stdout));
    assert.deepEqual(rows.map((r) => [r.names, r.current, r.memoryMiB]), [[['minimal'], true, 256], [['node-tools'], false, 384]]);
  });

  it('runs each session in the template its metadata names, the default without, and refuses an unknown one', async () => {
    const play = async (name: string, metadata: Record<string, string>, steps: unknown[]) => {
      const f = path.join(dir, `${name}.json`);
      writeFileSync(f, JSON.stringify({ name, metadata, steps }));
      const r = await cli(['demo', '--json', '--driver', 'qemu', '--scenario', f, '--home', home]);
      let report;
      try { report = DemoReport.parse(JSON.parse(r.stdout)); } catch { assert.fail(`demo printed no report (exit ${r.code}):\n${r.stdout}\n${r.stderr}`); }
      assert.deepEqual(report.calls.filter((c) => !c.ok).map((c) => `${c.label}: ${c.reason}`), [], r.stderr);
      assert.equal(report.ok, true);
    };
    await play('node-session', { 'perimeter.template': 'node-tools' }, [
      { label: 'node', tool: 'bash', input: { command: 'node -e \'console.log(1+1)\' | sed "s/^/node says /"' }, expectIncludes: ['node says 2'] },
      { label: 'the template\'s env, workdir, file and command', tool: 'bash', input: { command: 'echo "TEAM=$TEAM"; pwd; cat /opt/tools/hello.txt /etc/built-by-command' },
        expectIncludes: ['TEAM=platform', '/srv/app', 'copied from the project', 'made by a build command for platform'] },
      { label: 'memory of this template', tool: 'bash', input: { command: 'awk \'/MemTotal/ { print ($2 > 300000) ? "big enough" : "too small" }\' /proc/meminfo' }, expectIncludes: ['big enough'] },
    ]);
    await play('default-session', {}, [
      { label: 'the default template has no node', tool: 'bash', input: { command: 'command -v node || echo no-node-here' }, expectIncludes: ['no-node-here'] },
    ]);
    await play('unknown-session', { 'perimeter.template': 'no-such-template' }, [
      { label: 'refused', tool: 'bash', input: { command: 'echo must-not-run' }, expectError: true,
        expectIncludes: ['this host has no template "no-such-template"', 'minimal', 'node-tools'], expectExcludes: ['must-not-run'] },
    ]);
  });

  it('keeps a warm pool per template, sized by recent use within the memory budget', async () => {
    const hashOf = (name: string) => findTemplate(home, name)!.manifest.hash;
    const settle = async (pools: QemuTemplatePools, want: Record<string, number>) => {
      const expected = Object.fromEntries(Object.entries(want).map(([n, k]) => [hashOf(n), k]));
      const until = Date.now() + 300_000;
      let seen: Record<string, number> = {};
      while (Date.now() < until) {
        seen = Object.fromEntries(pools.poolSizes());
        if (JSON.stringify(seen, Object.keys(expected).sort()) === JSON.stringify(expected, Object.keys(expected).sort())) return;
        await new Promise((r) => setTimeout(r, 500));
      }
      assert.deepEqual(seen, expected, 'ready VMs per template');
    };
    for (const [budget, want] of [[1200, { minimal: 2, 'node-tools': 1 }], [600, { minimal: 0, 'node-tools': 1 }]] as const) {
      const pools = new QemuTemplatePools(loadConfig({ home, sandbox: { poolSize: 2, poolMemoryMiB: budget } }, {}));
      try {
        const s = await pools.acquire({ sessionId: 'pools', template: 'node-tools' });
        await s.destroy();
        await settle(pools, want);
      } finally { await pools.close(); }
    }
  });
});
