// Isolation you cannot miss: a connected worker on the `process` driver (tool calls run as host processes) turns the
// status bar to the warning colour and says so, and its host row gets its own icon; a VM driver does neither.
import assert from 'node:assert/strict';
import { PerimeterModel } from '../../extension/views/model';
import { describeHost, withoutIsolation } from '../../extension/views/items';
import { statusBarText } from '../../extension/views/statusText';
import { facts } from './control-fixtures';

function hostWith(driver: 'process' | 'qemu'): PerimeterModel {
  const m = new PerimeterModel(() => 5000);
  m.ensureHost('local', 'This machine');
  m.applyHello('local', { type: 'hello', protocol: 1, version: '0.1.0', state: 'polling', facts: facts({ driver, accel: driver === 'qemu' ? 'kvm' : 'none' }), serverTime: 5000 });
  m.setConnection('local', 'connected');
  return m;
}

describe('a worker without VM isolation', () => {
  it('turns the status bar to the warning colour and names it; its host row shows an open lock', () => {
    const m = hostWith('process');
    const s = statusBarText(m, 120_000);
    assert.equal(s.warning, true);
    assert.match(s.text, /no VM isolation/);
    assert.match(s.tooltip, /NO VM isolation/);
    assert.equal(withoutIsolation(m.host('local')!), true);
    assert.equal(describeHost(m.host('local')!).icon, 'unlock list.warningForeground');
  });

  it('a microVM driver is not flagged', () => {
    const m = hostWith('qemu');
    const s = statusBarText(m, 120_000);
    assert.equal(s.warning, false);
    assert.doesNotMatch(s.text, /isolation/);
    assert.notEqual(describeHost(m.host('local')!).icon.split(' ')[0], 'unlock');
  });
});
