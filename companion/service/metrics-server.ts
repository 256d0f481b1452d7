// The opt-in HTTP endpoint for monitoring (`metrics.enabled`): `GET /metrics` (Prometheus text format) and
// `GET /healthz` (200 `{"ok":true}` while the worker can claim work, else 503 with the problems). It listens on
// `metrics.listen` (default 127.0.0.1:9464: loopback; any other address only when configured). It serves nothing
// else: no control, no session data, no secrets (the metrics carry none).
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { fatal } from '../errors';
import { logger } from '../log';
import type { CompanionMetrics } from './metrics';

const log = logger('metrics');

export interface MetricsServer {
  /** host:port it listens on. */
  readonly address: string;
  close(): Promise<void>;
}

/** Splits `host:port` (`[v6]:port` for IPv6) into its parts. */
export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(listen);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw fatal('config_invalid', `metrics.listen ${JSON.stringify(listen)} is not host:port (e.g. 127.0.0.1:9464 or [::1]:9464)`);
  return { host: (m[1] ?? m[2])!, port };
}

export async function startMetricsServer(metrics: CompanionMetrics, listen: string): Promise<MetricsServer> {
  const { host, port } = parseListen(listen);
  const server = http.createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://metrics').pathname;
    if (req.method !== 'GET' && req.method !== 'HEAD') { res.writeHead(405, { allow: 'GET, HEAD' }).end(); return; }
    if (path === '/metrics') {
      metrics.registry.metrics().then((text) => {
        res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(text);
      }, (err: Error) => {
        log.warn(`collecting metrics failed: ${err.message}`);
        res.writeHead(500, { 'content-type': 'text/plain' }).end('collecting metrics failed\n');
      });
    } else if (path === '/healthz') {
      const h = metrics.health();
      res.writeHead(h.ok ? 200 : 503, { 'content-type': 'application/json' }).end(`${JSON.stringify(h)}\n`);
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: /metrics or /healthz\n');
    }
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 15_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(fatal('metrics_listen_failed', `cannot listen for metrics on ${listen}: ${err.message}`)));
    server.listen(port, host, () => resolve());
  });
  const a = server.address() as AddressInfo;
  const address = a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
  log.info(`metrics on http://${address}/metrics, health on http://${address}/healthz`);
  return {
    address,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}
