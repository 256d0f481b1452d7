// Leveled logger with component prefixes. Every line passes through `redact`, so an environment key, a sessions
// token or a work secret never reaches a log sink, whichever component wrote it. Output goes to stderr (stdout is
// reserved for command results such as `doctor --json`) and to any extra sinks (the control API's log stream, journald).
// A line may carry structured context (`with({ session, call, tool })`), which sinks keep as fields.
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/** The context a line is about: a session, a tool call and its tool. */
export interface LogFields { session?: string; call?: string; tool?: string }
export interface LogRecord { ts: number; level: LogLevel; component: string; message: string; fields?: LogFields }
type Sink = (record: LogRecord) => void;

const SECRET_PATTERNS: RegExp[] = [
  /sk-ant-[A-Za-z0-9_-]{4,}/g,               // API keys, environment keys, sessions tokens
  /\b(secret|token|authorization|api[_-]?key)(["'\s:=]+)(Bearer\s+)?[A-Za-z0-9._~+/=-]{8,}/gi,
];
const registeredSecrets = new Set<string>();

/** Registers a literal secret value (e.g. a work item's `secret`) so every later log line masks it. */
export function registerSecret(value: string | null | undefined): void {
  if (value && value.length >= 8) registeredSecrets.add(value);
}

export function redact(text: string): string {
  let out = text;
  for (const s of registeredSecrets) out = out.split(s).join('[redacted]');
  out = out.replace(SECRET_PATTERNS[0]!, 'sk-ant-[redacted]');
  out = out.replace(SECRET_PATTERNS[1]!, (_m, k: string, sep: string, bearer: string | undefined) => `${k}${sep}${bearer ?? ''}[redacted]`);
  return out;
}

let threshold: LogLevel = (process.env.PERIMETER_LOG_LEVEL as LogLevel | undefined) ?? 'info';
const sinks = new Set<Sink>();
let stderrEnabled = true;

export function setLogLevel(level: LogLevel): void { threshold = level; }
export function setStderrLogging(enabled: boolean): void { stderrEnabled = enabled; }
export function addLogSink(sink: Sink): () => void { sinks.add(sink); return () => sinks.delete(sink); }

function format(args: unknown[]): string {
  return args.map((a) => (a instanceof Error ? a.stack ?? a.message : typeof a === 'string' ? a : safeJson(a))).join(' ');
}
function safeJson(v: unknown): string { try { return JSON.stringify(v); } catch { return String(v); } }

export interface Logger {
  debug(...args: unknown[]): void;
  info(...args: unknown[]): void;
  warn(...args: unknown[]): void;
  error(...args: unknown[]): void;
  child(sub: string): Logger;
  /** The same logger, its lines about `fields` (merged with any it already has). */
  with(fields: LogFields): Logger;
}

export function logger(component: string, fields?: LogFields): Logger {
  const emit = (level: LogLevel, args: unknown[]) => {
    if (ORDER[level] < ORDER[threshold]) return;
    const record: LogRecord = { ts: Date.now(), level, component, message: redact(format(args)), ...(fields ? { fields } : {}) };
    if (stderrEnabled) process.stderr.write(`${new Date(record.ts).toISOString()} ${level.toUpperCase().padEnd(5)} [${component}] ${record.message}\n`);
    for (const sink of sinks) sink(record);
  };
  return {
    debug: (...a) => emit('debug', a),
    info: (...a) => emit('info', a),
    warn: (...a) => emit('warn', a),
    error: (...a) => emit('error', a),
    child: (sub) => logger(`${component}:${sub}`, fields),
    with: (more) => logger(component, { ...fields, ...more }),
  };
}
