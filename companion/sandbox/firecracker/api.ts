// Firecracker's REST API (HTTP/1.1 over its Unix API socket) and the vsock CONNECT handshake. Request bodies follow
// the published swagger definitions (BootSource, Drive, PartialDrive, MachineConfiguration, Vsock, InstanceActionInfo, Vm,
// SnapshotCreateParams, SnapshotLoadParams); test/unit/firecracker-contract.test.ts checks every request this module
// sends against our contract of that API (test/unit/fixtures/firecracker-contract.ts). Invariants: every call has a
// deadline; a non-2xx answer becomes an error carrying Firecracker's `fault_message`; answers are size-capped.
import http from 'node:http';
import net from 'node:net';
import { z } from 'zod';

export interface BootSource { kernel_image_path: string; initrd_path?: string; boot_args?: string }
export interface Drive { drive_id: string; path_on_host: string; is_root_device: boolean; is_read_only: boolean; cache_type?: 'Unsafe' | 'Writeback'; io_engine?: 'Sync' | 'Async' }
/** PATCH /drives/{id} after boot or snapshot load: Firecracker reopens `path_on_host` and tells the guest. */
export interface PartialDrive { drive_id: string; path_on_host: string }
export interface MachineConfiguration { vcpu_count: number; mem_size_mib: number; smt?: boolean; track_dirty_pages?: boolean }
export interface Vsock { guest_cid: number; uds_path: string }
export interface SnapshotCreateParams { snapshot_type?: 'Full' | 'Diff'; snapshot_path: string; mem_file_path: string }
export interface SnapshotLoadParams {
  snapshot_path: string;
  mem_backend: { backend_type: 'File' | 'Uffd'; backend_path: string };
  resume_vm?: boolean;
  vsock_override?: { uds_path: string };
  clock_realtime?: boolean;
}

export class FirecrackerApiError extends Error {
  constructor(readonly status: number, message: string) { super(message); this.name = 'FirecrackerApiError'; }
}

const FaultSchema = z.object({ fault_message: z.string() });
const VersionSchema = z.object({ firecracker_version: z.string() });
const MAX_RESPONSE = 1 << 20;

export class FirecrackerApi {
  constructor(private readonly socketPath: string, private readonly timeoutMs = 10_000) {}

  putBootSource(b: BootSource) { return this.call('PUT', '/boot-source', b); }
  putDrive(d: Drive) { return this.call('PUT', `/drives/${encodeURIComponent(d.drive_id)}`, d); }
  patchDrive(d: PartialDrive) { return this.call('PATCH', `/drives/${encodeURIComponent(d.drive_id)}`, d); }
  putMachineConfig(m: MachineConfiguration) { return this.call('PUT', '/machine-config', m); }
  putVsock(v: Vsock) { return this.call('PUT', '/vsock', v); }
  start() { return this.call('PUT', '/actions', { action_type: 'InstanceStart' }); }
  pause() { return this.call('PATCH', '/vm', { state: 'Paused' }); }
  resume() { return this.call('PATCH', '/vm', { state: 'Resumed' }); }
  createSnapshot(p: SnapshotCreateParams) { return this.call('PUT', '/snapshot/create', p, 120_000); }
  loadSnapshot(p: SnapshotLoadParams) { return this.call('PUT', '/snapshot/load', p, 60_000); }
  async version(): Promise<string> { return VersionSchema.parse(await this.call('GET', '/version')).firecracker_version; }

  /** Waits until the API socket accepts requests (Firecracker creates it shortly after start). */
  async waitReady(timeoutMs = 5_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      try { await this.version(); return; } catch (err) {
        if (Date.now() > until) throw new Error(`Firecracker API at ${this.socketPath} not ready: ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, 5));
      }
    }
  }

  call(method: 'GET' | 'PUT' | 'PATCH', path: string, body?: unknown, timeoutMs = this.timeoutMs): Promise<unknown> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      const req = http.request({
        socketPath: this.socketPath, method, path,
        headers: { Accept: 'application/json', ...(payload ? { 'Content-Type': 'application/json', 'Content-Length': payload.length } : {}) },
      }, (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (d: Buffer) => { size += d.length; if (size > MAX_RESPONSE) req.destroy(new Error('Firecracker answer too large')); else chunks.push(d); });
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json: unknown = null;
          try { json = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
          const status = res.statusCode ?? 0;
          if (status >= 200 && status < 300) return resolve(json);
          const fault = FaultSchema.safeParse(json);
          reject(new FirecrackerApiError(status, `${method} ${path}: ${status} ${fault.success ? fault.data.fault_message : text.slice(0, 300)}`));
        });
      });
      req.setTimeout(timeoutMs, () => req.destroy(new Error(`${method} ${path} timed out after ${timeoutMs} ms`)));
      req.once('error', reject);
      req.end(payload);
    });
  }
}

/**
 * Host-initiated vsock connection through Firecracker's Unix socket: send `CONNECT <port>\n`, expect `OK <n>\n`;
 * afterwards the socket is a byte stream to the guest's vsock port.
 */
export function connectVsock(udsPath: string, port: number, timeoutMs = 5_000): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(udsPath);
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => { sock.destroy(); reject(new Error(`vsock CONNECT ${port} timed out`)); }, timeoutMs);
    const fail = (err: Error) => { clearTimeout(timer); sock.destroy(); reject(err); };
    sock.once('error', fail);
    sock.once('connect', () => sock.write(`CONNECT ${port}\n`));
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      const nl = buf.indexOf(0x0a);
      if (nl < 0) { if (buf.length > 64) fail(new Error('vsock handshake: answer too long')); return; }
      const line = buf.subarray(0, nl).toString('latin1');
      if (!/^OK \d+$/.test(line)) return fail(new Error(`vsock handshake refused: ${JSON.stringify(line.slice(0, 64))}`));
      clearTimeout(timer);
      sock.off('data', onData);
      sock.off('error', fail);
      sock.pause();
      const rest = buf.subarray(nl + 1);
      if (rest.length) sock.unshift(rest);
      resolve(sock);
    };
    sock.on('data', onData);
  });
}
