// Reads the first bytes of a guest connection until a parser can decide (a TLS ClientHello or an HTTP request
// head), under a byte cap and two deadlines: one for the first byte (a loaded guest, e.g. 30 TLS clients starting at
// once under TCG, can take seconds to compute its key shares) and a shorter one from the first byte to a decision
// (so a trickled hello cannot hold a slot). Invariants: the returned promise always settles (data, end, close, error,
// cap or deadline); every listener it added is removed and the stream is paused on settle, so the caller can pipe
// the stream afterwards without losing a byte; `buffered` holds exactly the bytes read so far, to forward verbatim.
import type { Duplex } from 'node:stream';

export type PrefixStep<T> = { status: 'incomplete'; need?: number } | { status: 'done'; value: T };

export type PrefixOutcome<T> =
  | { status: 'done'; value: T; buffered: Buffer }
  | { status: 'timeout' | 'closed' | 'too_large' | 'stream_error'; buffered: Buffer; detail: string };

export interface PrefixLimits {
  maxBytes: number;
  /** From the first byte to a decision. */
  timeoutMs: number;
  /** From the start to the first byte (default: timeoutMs). */
  firstByteTimeoutMs?: number;
}

export function readPrefix<T>(stream: Duplex, parse: (data: Buffer) => PrefixStep<T>, limits: PrefixLimits): Promise<PrefixOutcome<T>> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let need = 1;
    let settled = false;

    const finish = (outcome: PrefixOutcome<T>) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('close', onClose);
      stream.off('error', onError);
      stream.pause();
      resolve(outcome);
    };
    const buffered = () => (chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));

    const onData = (chunk: Buffer | string) => {
      const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      if (size === 0 && buf.length > 0) { clearTimeout(timer); timer = deadline(limits.timeoutMs, 'no decision'); }
      chunks.push(buf);
      size += buf.length;
      if (size < need && size <= limits.maxBytes) return;
      const all = buffered();
      chunks.length = 0;
      chunks.push(all);
      const step = parse(all);
      if (step.status === 'done') return finish({ status: 'done', value: step.value, buffered: all });
      if (size >= limits.maxBytes) return finish({ status: 'too_large', buffered: all, detail: `no decision within ${limits.maxBytes} bytes` });
      need = Math.max(size + 1, step.need ?? 0);
    };
    const onEnd = () => finish({ status: 'closed', buffered: buffered(), detail: `stream ended after ${size} bytes` });
    const onClose = () => finish({ status: 'closed', buffered: buffered(), detail: `stream closed after ${size} bytes` });
    const onError = (err: Error) => finish({ status: 'stream_error', buffered: buffered(), detail: err.message });
    const deadline = (ms: number, what: string) => setTimeout(() => finish({ status: 'timeout', buffered: buffered(), detail: `${what} within ${ms} ms (${size} bytes read)` }), ms);
    let timer = deadline(limits.firstByteTimeoutMs ?? limits.timeoutMs, 'no first byte');

    stream.on('data', onData);
    stream.once('end', onEnd);
    stream.once('close', onClose);
    stream.once('error', onError);
    stream.resume();
  });
}
