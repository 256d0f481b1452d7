// Logging to journald when the companion runs under systemd: systemd sets JOURNAL_STREAM to the device and inode of
// the stream it connected to stderr, and only when stderr still is that stream does the companion log to the journal.
// Each line then becomes a journal entry through the native protocol (perimeter-journal-send, journal-send.c), with
// PRIORITY, SYSLOG_IDENTIFIER, PERIMETER_COMPONENT and the line's context as PERIMETER_SESSION, PERIMETER_CALL,
// PERIMETER_TOOL (`journalctl -u perimeter PERIMETER_SESSION=…`). Without the helper, lines go to stderr with a
// `<N>` priority prefix (journald reads the priority from it; no fields). Invariants:
// - Entries pass through the logger's redaction first (log.ts): no key or work secret reaches the journal.
// - Each line reaches the journal once: the plain stderr writer is switched off while a journal sink is active.
// - Logging never blocks or stops the companion: if the helper dies, the sink falls back to prefixed stderr lines.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, fstatSync } from 'node:fs';
import path from 'node:path';
import { addLogSink, setStderrLogging, type LogLevel, type LogRecord } from '../log';

export const JOURNAL_SOCKET = '/run/systemd/journal/socket';
export const JOURNAL_SEND_HELPER = 'perimeter-journal-send';
const SYSLOG_PRIORITY: Record<LogLevel, number> = { error: 3, warn: 4, info: 6, debug: 7 };
/** Entries above this size are cut (journald's datagram limit is about 200 KiB). */
const MAX_MESSAGE_BYTES = 64 * 1024;

/** True when stderr is the journal stream systemd connected (JOURNAL_STREAM=<dev>:<inode>). */
export function stderrIsJournal(env: NodeJS.ProcessEnv = process.env, fd = 2): boolean {
  const m = /^(\d+):(\d+)$/.exec(env.JOURNAL_STREAM ?? '');
  if (!m) return false;
  try {
    const st = fstatSync(fd, { bigint: true });
    return st.dev === BigInt(m[1]!) && st.ino === BigInt(m[2]!);
  } catch { return false; }
}

/** One entry in journald's native protocol: `KEY=value\n`, or `KEY\n<u64 LE length><value>\n` when the value has a newline. */
export function encodeEntry(fields: Record<string, string>): Buffer {
  const parts: Buffer[] = [];
  for (const [key, value] of Object.entries(fields)) {
    if (!/^[A-Z0-9][A-Z0-9_]*$/.test(key)) throw new Error(`invalid journal field name ${key}`);
    if (!value.includes('\n')) { parts.push(Buffer.from(`${key}=${value}\n`)); continue; }
    const data = Buffer.from(value);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(data.length));
    parts.push(Buffer.from(`${key}\n`), len, data, Buffer.from('\n'));
  }
  return Buffer.concat(parts);
}

/** The journal fields of one log record. */
export function entryFields(record: LogRecord): Record<string, string> {
  let message = record.message;
  if (Buffer.byteLength(message) > MAX_MESSAGE_BYTES) message = `${Buffer.from(message).subarray(0, MAX_MESSAGE_BYTES).toString('utf8')} …[cut]`;
  const f = record.fields ?? {};
  return {
    MESSAGE: message,
    PRIORITY: String(SYSLOG_PRIORITY[record.level]),
    SYSLOG_IDENTIFIER: 'perimeter',
    PERIMETER_COMPONENT: record.component,
    ...(f.session ? { PERIMETER_SESSION: f.session } : {}),
    ...(f.call ? { PERIMETER_CALL: f.call } : {}),
    ...(f.tool ? { PERIMETER_TOOL: f.tool } : {}),
  };
}

/** A stderr line journald reads the priority of (its own timestamp replaces ours). */
export function prefixedLine(record: LogRecord): string {
  return `<${SYSLOG_PRIORITY[record.level]}>[${record.component}] ${record.message.replace(/\n/g, '\n  ')}\n`;
}

export function journalSendHelper(): string | null {
  const candidates = [path.join(__dirname, 'guest', JOURNAL_SEND_HELPER), path.join(__dirname, '..', '..', 'dist', 'guest', JOURNAL_SEND_HELPER)];
  return candidates.find((c) => existsSync(c)) ?? null;
}

export type JournalMode = 'native' | 'prefixed';

/**
 * Routes the companion's log to journald when stderr is the journal stream; returns how, or null when not under
 * systemd (logging is left as it is). `socket` is journald's native socket (tests give their own).
 */
export function logToJournal(env: NodeJS.ProcessEnv = process.env, socket = env.PERIMETER_JOURNAL_SOCKET ?? JOURNAL_SOCKET): JournalMode | null {
  if (!stderrIsJournal(env)) return null;
  setStderrLogging(false);
  const helper = journalSendHelper();
  let sender: ChildProcess | null = helper && existsSync(socket)
    ? spawn(helper, [socket], { stdio: ['pipe', 'ignore', 'inherit'], env: {} })
    : null;
  const fallBack = () => { sender = null; };
  sender?.once('error', fallBack);
  sender?.once('exit', fallBack);
  sender?.stdin!.on('error', fallBack);
  // The helper exits at end of input: it does not keep the companion alive.
  sender?.unref();
  (sender?.stdin as { unref?: () => void } | undefined)?.unref?.();
  addLogSink((record) => {
    if (sender?.stdin?.writable) {
      const entry = encodeEntry(entryFields(record));
      const head = Buffer.alloc(4);
      head.writeUInt32LE(entry.length);
      sender.stdin.write(Buffer.concat([head, entry]));
    } else {
      process.stderr.write(prefixedLine(record));
    }
  });
  return sender ? 'native' : 'prefixed';
}
