// The control API's message parser against random and mutated messages over a real WebSocket (seeded: a failure
// reproduces from its case): random text, broken JSON, JSON of every shape, valid requests with mutated bytes or
// random params. Every message gets exactly one reply (a response, or an error with a code and a message, carrying the
// request's id when it had a usable one), the server never crashes or closes an authenticated client over it, and it
// still answers afterwards. An unauthenticated client gets only errors, never data.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import WebSocket from 'ws';
import { startControlServer, type ControlServer } from '../../companion/control/server';
import type { WorkerControl } from '../../companion/control/types';
import { EventHub } from '../../companion/events';
import { Journal } from '../../companion/journal/journal';
import { Persistence } from '../../companion/persist/persistence';
import { ControlErrorCode, ServerMessage } from '../../companion/protocol/control';
import { setStderrLogging } from '../../companion/log';
import { mutate, prng, type Rng } from './fuzz';

const METHODS = ['auth', 'ping', 'listSessions', 'listCalls', 'getCallOutput', 'getPersist', 'setPersist', 'drain', 'nope', '__proto__', 'constructor'];

function randomJson(rng: Rng, depth = 0): unknown {
  switch (rng.int(0, depth > 2 ? 4 : 7)) {
    case 0: return null;
    case 1: return rng.next() < 0.5;
    case 2: return rng.pick([0, -1, 1.5, 2 ** 53, -(2 ** 63), Number.MAX_VALUE, 1e308]);
    case 3: return rng.pick(['', 'x', 's1', '/workspace', '\u0000', '../..', 'a'.repeat(300), '\ud800']);
    case 4: return rng.bytes(rng.int(0, 12)).toString('latin1');
    case 5: return Array.from({ length: rng.int(0, 4) }, () => randomJson(rng, depth + 1));
    default: {
      const o: Record<string, unknown> = {};
      for (let k = rng.int(0, 4); k > 0; k--) o[rng.pick(['id', 'method', 'params', 'sessionId', 'limit', 'cursor', 'patterns', 'token', 'toolUseId', '__proto__', 'x'])] = randomJson(rng, depth + 1);
      return o;
    }
  }
}

function validRequest(rng: Rng, id: number): Record<string, unknown> {
  const method = rng.pick(['ping', 'listSessions', 'listCalls', 'getCallOutput', 'getPersist', 'setPersist']);
  const params: Record<string, unknown> = {
    ping: {}, listSessions: { limit: rng.int(1, 500) }, listCalls: { sessionId: 's1', limit: 10 }, getCallOutput: { toolUseId: 'c1' },
    getPersist: { sessionId: rng.pick(['s1', 'nope']) }, setPersist: { sessionId: 's1', patterns: ['/workspace', '/srv/x'] },
  }[method]!;
  return { id, method, params };
}

/** One fuzz message: [text sent, the id a reply should carry (undefined: none or any)]. */
function fuzzMessage(rng: Rng, i: number): { text: string; id: number | null | undefined } {
  const kind = rng.int(0, 4);
  if (kind === 0) return { text: rng.bytes(rng.int(0, 80)).toString('utf8'), id: undefined };
  if (kind === 1) { const text = mutate(Buffer.from(JSON.stringify(validRequest(rng, i))), rng).toString('utf8'); return { text, id: undefined }; }
  if (kind === 2) return { text: JSON.stringify(randomJson(rng)) ?? 'null', id: undefined };
  if (kind === 3) return { text: JSON.stringify({ id: i, method: rng.pick(METHODS), params: randomJson(rng) }), id: i };
  return { text: JSON.stringify(validRequest(rng, i)), id: i };
}

function collect(ws: WebSocket): ServerMessage[] {
  const got: ServerMessage[] = [];
  ws.on('message', (d) => got.push(ServerMessage.parse(JSON.parse(d.toString()))));
  return got;
}

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 3000 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(cond(), `timed out waiting for ${what}`);
}

describe('control API parser fuzz', function () {
  this.timeout(120_000);
  let home: string;
  let server: ControlServer;
  let journal: Journal;
  const worker: WorkerControl = {
    state: () => 'polling',
    hostFacts: () => ({ hostname: 'fuzz', driver: 'process', accel: 'none', vmsRunning: 0, vmsPooled: 0, memoryAvailableMb: 1, concurrency: 1, version: 'test', pid: process.pid, startedAt: 0 }),
    drain: async () => {}, shutdown: async () => {},
  };
  before(async () => {
    setStderrLogging(false);
    home = mkdtempSync(path.join(os.tmpdir(), 'perimeter-ctlfuzz-'));
    journal = Journal.open(path.join(home, 'journal'));
    journal.updateSession('s1', { workId: 'w1', state: 'running', claimedAt: 1 });
    journal.callStarted({ toolUseId: 'c1', sessionId: 's1', workId: 'w1', name: 'bash', input: { command: 'echo' } });
    server = await startControlServer({ home, hub: new EventHub(), journal, persistence: new Persistence({ home, persist: { defaults: ['/workspace'], maxBytes: 1 << 20, maxFiles: 100, keepGenerations: 2 } }), worker });
  });
  after(async () => { await server.close(); journal.close(); rmSync(home, { recursive: true, force: true }); setStderrLogging(true); });

  it('answers each of 3000 fuzzed messages from an authenticated client exactly once, and keeps serving', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${server.endpoint.port}/`, { headers: { Authorization: `Bearer ${server.endpoint.token}` } });
    const got = collect(ws);
    let closed = false;
    ws.on('close', () => { closed = true; });
    await until(() => got.length === 1, 'hello');
    assert.equal(got[0]!.type, 'hello');
    const rng = prng(0xc0de);
    const sent = Array.from({ length: 3000 }, (_, i) => fuzzMessage(rng, 1000 + i));
    for (const m of sent) ws.send(m.text);
    await until(() => got.length === sent.length + 1 || closed, 'one reply per message');
    assert.equal(closed, false, 'the server kept the connection');
    const replies = got.slice(1);
    assert.equal(replies.length, sent.length);
    const byId = new Map<unknown, number>();
    for (const r of replies) {
      assert.ok(r.type === 'response' || r.type === 'error', `a reply, not ${r.type}`);
      if (r.type === 'error') {
        assert.ok(ControlErrorCode.options.includes(r.code));
        assert.ok(r.message.length > 0 && r.message.length < 2000, `a clear message: ${r.message.slice(0, 200)}`);
        assert.notEqual(r.code, 'internal', `no internal error for anything a client sends: ${r.message}`);
      }
      byId.set(r.id, (byId.get(r.id) ?? 0) + 1);
    }
    for (const m of sent) if (typeof m.id === 'number') assert.equal(byId.get(m.id), 1, `message ${m.id} answered once: ${m.text.slice(0, 120)}`);
    ws.send(JSON.stringify({ id: 'after', method: 'ping', params: {} }));
    await until(() => got.some((r) => r.type === 'response' && r.id === 'after'), 'a ping after the fuzz');
    ws.close();
  });

  it('gives unauthenticated clients only errors for 2000 fuzzed messages', async () => {
    const rng = prng(0xbad);
    let replies = 0;
    for (let c = 0; c < 40; c++) {
      const ws = new WebSocket(`ws://127.0.0.1:${server.endpoint.port}/`);
      const got = collect(ws);
      let closed = false;
      ws.on('close', () => { closed = true; });
      await new Promise<void>((resolve, reject) => { ws.once('open', () => resolve()); ws.once('error', reject); });
      // A request that parses but is not `auth` closes the connection (after its error); the rest get bad_request.
      for (let i = 0; i < 50; i++) ws.send(fuzzMessage(rng, i).text.replace(/"auth"/g, '"ping"'));
      ws.send('{"id": "last", "method": "ping", "params": {}}');
      await until(() => closed, 'the server to close the unauthenticated connection');
      for (const r of got) assert.ok(r.type === 'error' && (r.code === 'unauthorized' || r.code === 'bad_request'), JSON.stringify(r).slice(0, 200));
      replies += got.length;
    }
    assert.ok(replies >= 40, `every connection was answered (${replies} errors)`);
  });
});
