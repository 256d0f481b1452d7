// Test fixtures on 127.0.0.1: a throwaway PKI made with the openssl CLI, TLS/HTTP/raw servers that count what they
// receive, and an "agent" listener that feeds accepted sockets to a gateway as the guest agent's tunnel would.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import tls from 'node:tls';
import http from 'node:http';
import type { EgressAttachment } from '../../../companion/guest/types';

export interface TestPki { dir: string; caPem: string; key: string; cert: string; caFile: string }

/** A CA and one server certificate whose subjectAltName lists `names` (DNS names). */
export function makeTestPki(names: string[]): TestPki {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'perimeter-egress-pki-'));
  const run = (args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  run(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem',
    '-days', '2', '-subj', '/CN=Perimeter Egress Test CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign']);
  run(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', `/CN=${names[0]}`]);
  writeFileSync(path.join(dir, 'ext.cnf'), `subjectAltName=${names.map((n) => `DNS:${n}`).join(',')}\nextendedKeyUsage=serverAuth\n`);
  run(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'ext.cnf']);
  const read = (f: string) => readFileSync(path.join(dir, f), 'utf8');
  return { dir, caPem: read('ca.pem'), key: read('server.key'), cert: read('server.pem'), caFile: path.join(dir, 'ca.pem') };
}

export interface Fixture { port: number; connections: number; requests: Array<{ host: string | undefined; headers: http.IncomingHttpHeaders; url: string }>; close(): Promise<void> }

function closer(server: net.Server, sockets: Set<net.Socket>) {
  return () => new Promise<void>((resolve) => { for (const s of sockets) s.destroy(); server.close(() => resolve()); });
}

async function listen(server: net.Server, port = 0): Promise<number> {
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(port, '127.0.0.1', () => resolve()); });
  return (server.address() as net.AddressInfo).port;
}

/** An HTTPS server answering `body` (plus the request's Host) to every request. */
export async function startHttpsFixture(pki: TestPki, body: string, port = 0): Promise<Fixture> {
  const sockets = new Set<net.Socket>();
  const fx: Fixture = { port: 0, connections: 0, requests: [], close: async () => {} };
  const server = http.createServer((req, res) => {
    fx.requests.push({ host: req.headers.host, headers: req.headers, url: req.url ?? '' });
    res.end(`${body} host=${req.headers.host}\n`);
  });
  const tlsServer = tls.createServer({ key: pki.key, cert: pki.cert }, (socket) => server.emit('connection', socket));
  tlsServer.on('connection', (s: net.Socket) => { fx.connections += 1; sockets.add(s); s.on('close', () => sockets.delete(s)); });
  tlsServer.on('tlsClientError', () => {});
  fx.port = await listen(tlsServer, port);
  fx.close = closer(tlsServer, sockets);
  return fx;
}

/** A plain HTTP server answering `body` to every request (keep-alive enabled, as a real origin would). */
export async function startHttpFixture(body: string, port = 0): Promise<Fixture> {
  const sockets = new Set<net.Socket>();
  const fx: Fixture = { port: 0, connections: 0, requests: [], close: async () => {} };
  const server = http.createServer((req, res) => {
    fx.requests.push({ host: req.headers.host, headers: req.headers, url: req.url ?? '' });
    req.resume();
    req.on('end', () => res.end(`${body} host=${req.headers.host}\n`));
  });
  server.on('connection', (s: net.Socket) => { fx.connections += 1; sockets.add(s); s.on('close', () => sockets.delete(s)); });
  fx.port = await listen(server, port);
  fx.close = closer(server, sockets);
  return fx;
}

/** A raw TCP server recording every byte it receives (to prove byte-exact forwarding). */
export async function startCaptureFixture(): Promise<Fixture & { received: () => Buffer }> {
  const sockets = new Set<net.Socket>();
  const chunks: Buffer[] = [];
  const server = net.createServer((s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); s.on('data', (c) => chunks.push(c)); s.on('error', () => {}); });
  const fx = { port: 0, connections: 0, requests: [], close: closer(server, sockets), received: () => Buffer.concat(chunks) };
  server.on('connection', () => { fx.connections += 1; });
  fx.port = await listen(server);
  return fx;
}

/**
 * Stands in for the guest agent's listener: every connection accepted on 127.0.0.1:<ephemeral> is handed to the
 * gateway as a tunnelled guest connection to `guestPort`.
 */
export async function startAgentEmulator(attachment: EgressAttachment, guestPort: number): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); attachment.onConnection(s, guestPort); });
  const port = await listen(server);
  return { port, close: closer(server, sockets) };
}

/** Polls `cond` every 10 ms until it holds (bounded by the mocha timeout, not an assertion on time). */
export async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 10));
}
