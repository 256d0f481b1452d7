// Egress decisions in the log are rate-limited and aggregated: a guest that floods the gateway with connections to a
// denied host (real HTTP requests through the gateway, entering as the agent's tunnel hands them over) costs a couple
// of log lines, while every decision still reaches the hub; distinct kinds beyond the per-window cap are summed up.
import assert from 'node:assert/strict';
import net from 'node:net';
import { createEgressGateway } from '../../companion/egress/proxy';
import { DecisionLog } from '../../companion/egress/decision-log';
import { EventHub } from '../../companion/events';
import { addLogSink, setStderrLogging, logger, type LogRecord } from '../../companion/log';
import { startAgentEmulator } from './helpers/fixtures';

function request(port: number, host: string): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => s.write(`GET / HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`));
    let out = '';
    s.on('data', (d) => { out += d.toString(); });
    s.on('close', () => resolve(out));
    s.on('error', () => {});
  });
}

describe('egress decision log', function () {
  this.timeout(60_000);
  const lines: LogRecord[] = [];
  let removeSink: () => void;
  before(() => { setStderrLogging(false); removeSink = addLogSink((r) => { if (r.component === 'egress' || r.component === 'test-egress') lines.push(r); }); });
  after(() => { removeSink(); setStderrLogging(true); });
  beforeEach(() => { lines.length = 0; });

  it('a flood of 300 denied requests logs two lines; all 300 decisions reach the hub', async () => {
    const hub = new EventHub();
    let published = 0;
    hub.subscribe((e) => { if (e.type === 'egress.decision') published++; });
    const gw = createEgressGateway({ policy: { allow: ['allowed.test'], allowPrivate: ['127.0.0.0/8'] }, hub, sessionId: 's', resolver: async () => ['127.0.0.1'] });
    const agent = await startAgentEmulator(gw, 80);
    try {
      const answers = await Promise.all(Array.from({ length: 300 }, () => request(agent.port, 'evil.test')));
      assert.ok(answers.every((a) => a.startsWith('HTTP/1.1 403')), 'each request is refused');
      assert.equal(published, 300);
      const denied = lines.filter((l) => l.message.includes('evil.test'));
      assert.equal(denied.length, 1, denied.map((l) => l.message).join('\n'));
      assert.match(denied[0]!.message, /^denied http evil\.test:80 \(not_in_allowlist\)$/);
    } finally {
      gw.close();
      await agent.close();
    }
    const summary = lines.filter((l) => l.message.includes('evil.test'));
    assert.equal(summary.length, 2, 'closing the gateway ends the window');
    assert.match(summary[1]!.message, /^denied http evil\.test:80 \(not_in_allowlist\): 299 more time\(s\) in the last 60 s$/);
  });

  it('logs at most the cap of distinct decisions per window and sums up the rest; the next window logs again', () => {
    const log = new DecisionLog(logger('test-egress'), { maxLinesPerWindow: 5 });
    for (let i = 0; i < 40; i++) log.record({ allowed: false, kind: 'tls', host: `h${i}.test`, port: 443, reason: 'not_in_allowlist', address: null });
    log.record({ allowed: false, kind: 'tls', host: 'h0.test', port: 443, reason: 'not_in_allowlist', address: null });
    assert.equal(lines.length, 5);
    log.flush();
    assert.deepEqual(lines.slice(5).map((l) => l.message), [
      'denied tls h0.test:443 (not_in_allowlist): 1 more time(s) in the last 60 s',
      '35 more egress decision(s) of 35 other kind(s) in the last 60 s, not logged one by one',
    ]);
    log.record({ allowed: true, kind: 'tls', host: 'ok.test', port: 443, reason: 'matched ok.test', address: '10.0.0.1' });
    assert.equal(lines.at(-1)!.message, 'allowed tls ok.test:443 -> 10.0.0.1 (matched ok.test)');
    assert.equal(lines.at(-1)!.level, 'info');
    log.flush();
  });
});
