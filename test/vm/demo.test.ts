// The demo scenario through real VMs, the way a user runs it: the built CLI (`node dist/perimeter.js demo --json
// --driver qemu`) with its own state directory, the template taken from the built one (PERIMETER_TEMPLATE), every
// call of the bundled scenario in a QEMU microVM (per-call mode, warm pool). Skips (saying why) only when QEMU or
// the template is absent.
import assert from 'node:assert/strict';
import { z } from 'zod';
import demoScenario from '../../companion/devqueue/scenarios/demo.json';
import { findTemplate } from '../../companion/sandbox/template/manifest';
import { skipWithoutVms, vmConfig } from './helpers';
import { rmDir, runCli, tmpDir } from '../worker/helpers';

const DemoReport = z.object({
  scenario: z.string(),
  driver: z.string(),
  accel: z.string(),
  mode: z.string(),
  ok: z.boolean(),
  calls: z.array(z.object({ label: z.string(), tool: z.string(), ok: z.boolean(), reason: z.string().nullable() })),
});

describe('perimeter demo through real VMs (built CLI)', function () {
  this.timeout(600_000);
  before(function () { skipWithoutVms(this); });

  it('every call of the bundled scenario passes in QEMU microVMs', async () => {
    const home = tmpDir('perimeter-demo-home-');
    try {
      const template = findTemplate(vmConfig().home)!.dir;
      const cli = runCli(['demo', '--json', '--driver', 'qemu'], { PERIMETER_HOME: home, PERIMETER_TEMPLATE: template });
      const { code } = await cli.exit;
      let json: unknown;
      try { json = JSON.parse(cli.stdout()); } catch { assert.fail(`demo printed no JSON report (exit ${code}):\n${cli.stdout()}\n${cli.stderr()}`); }
      const report = DemoReport.parse(json);
      const failed = report.calls.filter((c) => !c.ok).map((c) => `${c.label}: ${c.reason}`);
      assert.deepEqual(failed, [], cli.stderr());
      assert.equal(report.driver, 'qemu');
      assert.equal(report.scenario, 'demo');
      assert.equal(report.mode, 'per-call');
      assert.deepEqual(report.calls.map((c) => c.label), demoScenario.steps.map((s) => s.label), 'the whole scenario ran');
      assert.equal(report.ok, true);
      assert.equal(code, 0, cli.stderr());
    } finally {
      rmDir(home);
    }
  });
});
