// The extension's control client against scripted WebSocket servers: heartbeat loss, invalid server messages,
// results that do not match their method's schema, and pending requests when the connection drops.
import assert from 'node:assert/strict';
import { WebSocketServer, type WebSocket } from 'ws';
import { ControlClient, ControlRequestError } from '../../extension/launcher/controlClient';
import { facts } from './control-fixtures';

/** A server that sends a valid hello, then lets `onRequest` answer (or not). */
async function scriptedServer(onRequest: (ws: WebSocket, req: { id: number; method: string }) => void) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => wss.once('listening', r));
  wss.on('connection', (ws) => {
    ws.send(JSON.stringify({ type: 'hello', protocol: 1, version: 't', state: 'polling', facts: facts(), serverTime: 0 }));
    ws.on('message', (d) => onRequest(ws, JSON.parse(d.toString())));
  });
  return { port: (wss.address() as { port: number }).port, close: () => new Promise<void>((r) => { for (const c of wss.clients) c.terminate(); wss.close(() => r()); }) };
}

describe('control client', () => {
  it('declares the connection lost when heartbeats go unanswered (liveness, not progress)', async () => {
    const srv = await scriptedServer(() => { /* never answers */ });
    const client = new ControlClient({ port: srv.port, token: 't'.repeat(43), heartbeatMs: 20, heartbeatTimeoutMs: 100, requestTimeoutMs: 5000 });
    await client.connect();
    const closed = await new Promise<string>((r) => client.onClose((c) => r(c.reason)));
    assert.equal(closed, 'heartbeat');
    await srv.close();
  });

  it('drops server messages that do not match the protocol and reports them', async () => {
    const srv = await scriptedServer((ws, req) => {
      ws.send('not json');
      ws.send(JSON.stringify({ type: 'event', event: { type: 'session.claimed', session: { sessionId: 1 } } }));
      ws.send(JSON.stringify({ type: 'response', id: req.id, result: { ts: Date.now(), state: 'polling' } }));
    });
    const client = new ControlClient({ port: srv.port, token: 't'.repeat(43), heartbeatMs: 60_000 });
    await client.connect();
    const problems: string[] = []; const events: string[] = [];
    client.onProtocolError((m) => problems.push(m));
    client.onEvent((e) => events.push(e.type));
    assert.equal((await client.request('ping')).state, 'polling');
    assert.equal(events.length, 0, 'an invalid event is not applied');
    assert.equal(problems.length, 2);
    client.close(); await srv.close();
  });

  it('rejects a result that does not match its method\'s schema', async () => {
    const srv = await scriptedServer((ws, req) => ws.send(JSON.stringify({ type: 'response', id: req.id, result: { items: 'nope' } })));
    const client = new ControlClient({ port: srv.port, token: 't'.repeat(43), heartbeatMs: 60_000 });
    await client.connect();
    await assert.rejects(client.request('listSessions'), /invalid listSessions result/);
    client.close(); await srv.close();
  });

  it('rejects pending requests when the connection drops', async () => {
    let received: (ws: WebSocket) => void = () => {};
    const arrived = new Promise<WebSocket>((r) => { received = r; });
    const srv = await scriptedServer((ws) => received(ws));
    const client = new ControlClient({ port: srv.port, token: 't'.repeat(43), heartbeatMs: 60_000 });
    await client.connect();
    const pending = client.request('listSessions');
    (await arrived).terminate();          // the server side dies with the request unanswered
    await assert.rejects(pending, (e: ControlRequestError) => e.code === 'closed');
    await assert.rejects(client.request('ping'), (e: ControlRequestError) => e.code === 'closed');
    await srv.close();
  });
});
