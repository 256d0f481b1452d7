// The tool-call orchestrator: one entry point per call, driver-agnostic. For each `agent.tool_use` it
//   journal `running` -> parse the input (once) -> acquire a Sandbox (per-call: fresh, destroyed after;
//   per-session: one per session) -> persistence.prepare -> copy the session's skills in -> run the tool
//   -> persistence.commit -> journal `done`/`failed` -> return the result (the SDK posts it; `resultPosted` records
//   `posted`). The journal and the panel events are the CallRecorder's (call-record.ts).
// Invariants:
// - A tool_use_id runs at most once per journal: a re-dispatched call with a stored result gets that result again;
//   one left running by a crash was already turned into an explicit `interrupted` error by the journal; the same
//   id with a different input is refused loudly. Concurrent duplicate dispatches share one execution.
// - The result is durable (journal fsync) and the persisted generation committed before the result is returned.
// - Nothing but the tool input (and the session's skills and persisted files) enters the sandbox; an input that does
//   not parse never starts one.
// - Failures of the sandbox, persistence or the tool are results with `isError: true`, never exceptions.
// - Each call run in a sandbox is observed once on the hub (`call.phases`: restore, copy-in, exec, copy-out times).
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { CallPhases, EventHub } from '../events';
import type { Journal } from '../journal/journal';
import type { CallPersistence, ShellState } from '../persist/types';
import type { Sandbox, SandboxDriver } from '../sandbox/types';
import type { EgressAttachment, PutFile } from '../guest/types';
import { logger } from '../log';
import { errorMessage } from '../errors';
import { parseToolCall, type ToolCall } from './schemas';
import { runToolCall, warmUpSandbox, INITIAL_SHELL, WORKDIR } from './semantics';
import { NO_OUTPUT } from './text';
import { CallRecorder, type CallOutcome, type CallResult, type ToolUse } from './call-record';
import type { CallPlacement, PersistChange } from '../protocol/control';

const log = logger('calls');
/** Guest directory the session's skills are copied to (persistence should not treat it as user data). */
export const SKILLS_GUEST_DIR = `${WORKDIR}/skills`;
const MAX_SKILL_BYTES = 64 * 1024 * 1024;
/** Paths of a call's persisted-file changes kept with the call (the rest are counted). */
const CHANGE_PATHS = 50;
/** call.output events are batched: one is published when this many characters are pending... */
const OUTPUT_EVENT_CHARS = 16 * 1024;
/** ...or this long after the oldest pending character arrived, so slow, small output reaches the panel live. */
const OUTPUT_EVENT_MAX_DELAY_MS = 100;

export interface CallRunnerOptions {
  driver: SandboxDriver;
  journal: Journal;
  hub: EventHub;
  mode: 'per-call' | 'per-session';
  callTimeoutMs: number;
  persistence?: CallPersistence;
  /** The egress attachment for a session's sandboxes; absent = no network. */
  egressFor?: (sessionId: string) => EgressAttachment | undefined;
  /** The companion's state directory, kept out of results like every host path. */
  stateDir?: string;
  /** Where calls run (host, driver, template), journaled with each call. */
  placement?: () => CallPlacement;
}

export interface SessionCallOptions {
  /** Host directory holding the session's downloaded skills (`<dir>/<name>/...`), if any. */
  skillsDir?: string;
}

export class CallRunner {
  private readonly inFlight = new Map<string, Promise<CallResult>>();
  /** Shell state per session when no persistence keeps it. */
  private readonly shells = new Map<string, ShellState>();
  /** @internal */ readonly record: CallRecorder;

  constructor(readonly opts: CallRunnerOptions) {
    opts.driver.setWarmup?.(warmUpSandbox);
    this.record = new CallRecorder(opts.journal, opts.hub, { stateDir: opts.stateDir, placement: opts.placement });
  }

  openSession(sessionId: string, workId: string, opts: SessionCallOptions = {}): SessionCalls {
    return new SessionCalls(this, sessionId, workId, opts);
  }

  /** The service accepted a call's result (the worker's wire observer saw the post succeed). */
  resultPosted(toolUseId: string): void { this.record.posted(toolUseId); }

  /** @internal */ shellFor(sessionId: string): ShellState { return this.shells.get(sessionId) ?? { ...INITIAL_SHELL, env: {} }; }
  /** @internal */ setShell(sessionId: string, s: ShellState): void { this.shells.set(sessionId, s); }
  /** @internal */ inFlightCall(id: string) { return this.inFlight.get(id); }
  /** @internal */ trackInFlight(id: string, p: Promise<CallResult>) { this.inFlight.set(id, p); void p.finally(() => this.inFlight.delete(id)); }
}

export class SessionCalls {
  private sessionSandbox: Sandbox | null = null;
  private sessionSandboxPrepared = false;
  private readonly running = new Map<string, { sandbox: Sandbox | null; abort: (reason: string) => void }>();
  private refuseReason: string | null = null;
  private ignoreRunnerAbort = false;
  /** Calls between dispatch and a durable result (running or being journaled). */
  private active = 0;
  /** The template the session's sandboxes are restored from (its `perimeter.template` metadata); absent: the default. */
  private template: string | undefined;

  constructor(private readonly runner: CallRunner, readonly sessionId: string, readonly workId: string, private readonly opts: SessionCallOptions) {}

  get inFlightCount(): number { return this.active; }

  /** The template this session's sandboxes come from (null: the environment's default). */
  useTemplate(name: string | null): void { this.template = name ?? undefined; }

  /** From now on, new calls are answered with an error instead of running (drain). */
  refuseNew(reason: string): void { this.refuseReason = reason; }

  /**
   * From now on, an abort of the SDK's per-call signal no longer kills running calls: used when a newer work item
   * supersedes this session's item, so a running call finishes and its journaled result is answered by the newer
   * item's runner instead of being lost.
   */
  detachFromRunnerAbort(): void { this.ignoreRunnerAbort = true; }

  /** Kills every running call's sandbox; those calls return `interrupted` error results. */
  abortInFlight(reason: string): void { for (const r of this.running.values()) r.abort(reason); }

  async run(toolUse: ToolUse, signal?: AbortSignal | null): Promise<CallResult> {
    const prior = this.runner.record.prior(toolUse);
    if (prior.kind === 'refused') return prior.result;
    if (prior.kind === 'known') {
      const shared = this.runner.inFlightCall(toolUse.id);
      if (shared) return shared;
      if (prior.stored) return this.runner.record.replay(toolUse.id, prior.stored);
    }
    this.active++;
    const p = this.execute(toolUse, signal ?? undefined).finally(() => { this.active--; });
    this.runner.trackInFlight(toolUse.id, p);
    return p;
  }

  private async execute(toolUse: ToolUse, signal?: AbortSignal): Promise<CallResult> {
    const started = this.runner.record.start(this.sessionId, this.workId, toolUse, this.template);
    if (!started.ok) return started.result;
    let outcome: CallOutcome;
    if (this.refuseReason) {
      outcome = { text: `not run: ${this.refuseReason}`, isError: true, exitCode: null };
    } else {
      const parsed = parseToolCall(toolUse.name, toolUse.input);
      outcome = parsed.ok ? await this.runInSandbox(toolUse.id, parsed.call, signal) : { text: parsed.message, isError: true, exitCode: null };
    }
    return started.call.finish(outcome);
  }

  private async runInSandbox(toolUseId: string, call: ToolCall, signal?: AbortSignal): Promise<CallOutcome> {
    const { driver, persistence, mode, callTimeoutMs, hub, egressFor } = this.runner.opts;
    const started = Date.now();
    const phases: CallPhases = {};
    let phaseStart = performance.now();
    const phaseEnd = (name: keyof CallPhases) => { const t = performance.now(); phases[name] = t - phaseStart; phaseStart = t; };
    let abortReason: string | null = null;
    const slot: { sandbox: Sandbox | null; abort: (reason: string) => void } = {
      sandbox: null,
      abort: (reason) => {
        if (abortReason) return;
        abortReason = reason;
        // Killing the sandbox is the only way to stop a guest command; in per-session mode the session's sandbox
        // goes with it and a fresh one is prepared for the next call.
        if (slot.sandbox) { if (slot.sandbox === this.sessionSandbox) this.dropSessionSandbox(); else void slot.sandbox.destroy(); }
      },
    };
    const onAbort = () => { if (!this.ignoreRunnerAbort) slot.abort(signal?.reason instanceof Error ? signal.reason.message : 'the call was cancelled'); };
    if (signal?.aborted) onAbort(); else signal?.addEventListener('abort', onAbort, { once: true });
    this.running.set(toolUseId, slot);
    let pending = '';
    let flushTimer: NodeJS.Timeout | null = null;
    const flush = () => {
      if (flushTimer) { clearTimeout(flushTimer); flushTimer = null; }
      if (pending) { hub.publish({ type: 'call.output', sessionId: this.sessionId, toolUseId: toolUseId, chunk: pending }); pending = ''; }
    };
    const onOutput = (chunk: string) => {
      pending += chunk;
      if (pending.length >= OUTPUT_EVENT_CHARS) flush();
      else if (!flushTimer && pending) flushTimer = setTimeout(flush, OUTPUT_EVENT_MAX_DELAY_MS);
    };
    try {
      let sandbox: Sandbox;
      let shell: ShellState;
      try {
        if (mode === 'per-session') {
          if (!this.sessionSandbox) { this.sessionSandbox = await driver.acquire({ sessionId: this.sessionId, egress: egressFor?.(this.sessionId), template: this.template }); this.sessionSandboxPrepared = false; }
          sandbox = this.sessionSandbox;
        } else {
          // Persistence may hand out a sandbox it prepared for this session while the model thought (session disks).
          const open = () => driver.acquire({ sessionId: this.sessionId, egress: egressFor?.(this.sessionId), template: this.template });
          sandbox = persistence?.acquire ? await persistence.acquire(this.sessionId, open) : await open();
        }
        phaseEnd('restore');
        slot.sandbox = sandbox;
        if (abortReason) throw new Error(abortReason);
        if (mode === 'per-call' || !this.sessionSandboxPrepared) {
          const prepared = persistence ? await persistence.prepare(this.sessionId, sandbox) : null;
          if (prepared) this.runner.setShell(this.sessionId, prepared);
          await this.copySkills(sandbox);
          if (mode === 'per-session') this.sessionSandboxPrepared = true;
        }
        phaseEnd('copyIn');
        shell = this.runner.shellFor(this.sessionId);
        // a session's very first call starts where its template says (later ones where the session left off)
        if (sandbox.profile?.workdir && this.runner.opts.journal.listCalls(this.sessionId, { limit: 2 }).items.length <= 1) shell = { ...shell, cwd: sandbox.profile.workdir };
      } catch (err) {
        if (abortReason) return { text: `interrupted: ${abortReason}`, isError: true, exitCode: null, state: 'interrupted' };
        log.with({ session: this.sessionId, call: toolUseId, tool: call.name }).error(`sandbox for ${toolUseId} failed: ${errorMessage(err)}`);
        if (slot.sandbox && mode === 'per-call') await slot.sandbox.destroy().catch(() => {});
        if (mode === 'per-session') this.dropSessionSandbox();
        return { text: `sandbox unavailable: ${errorMessage(err)}`, isError: true, exitCode: null };
      }
      const outcome = await runToolCall(call, { sandbox, shell, callTimeoutMs, onOutput, profile: sandbox.profile });
      phaseEnd('exec');
      flush();
      if (abortReason) {
        const secs = Math.round((Date.now() - started) / 1000);
        const partial = outcome.text && outcome.text !== NO_OUTPUT ? `${outcome.text}\n` : '';
        return { text: `${partial}interrupted: ${abortReason}; the command was killed after ${secs} s`, isError: true, exitCode: outcome.exitCode, state: 'interrupted' };
      }
      const nextShell = outcome.shell ?? shell;
      this.runner.setShell(this.sessionId, nextShell);
      let text = outcome.text;
      let isError = outcome.isError;
      let persisted: PersistChange | undefined;
      if (persistence) {
        try {
          const report = await persistence.commit(this.sessionId, sandbox, nextShell, { timedOut: outcome.timedOut });
          if (report.notes.length) text = `${text}\n[persisted files] ${report.notes.join('; ')}`;
          const c = report.changes;
          if (c && c.added.length + c.changed.length + c.removed.length > 0) persisted = persistChange(report.generation, c);
        } catch (err) {
          log.with({ session: this.sessionId, call: toolUseId, tool: call.name }).error(`persist commit for ${toolUseId} failed: ${errorMessage(err)}`);
          text = `${text}\n[persisted files] not saved: ${errorMessage(err)}`;
          isError = true;
        }
        phaseEnd('copyOut');
      }
      return { text, isError, exitCode: outcome.exitCode, ...(persisted ? { persist: persisted } : {}) };
    } finally {
      flush();
      hub.observe({ type: 'call.phases', tool: call.name, phases });
      signal?.removeEventListener('abort', onAbort);
      this.running.delete(toolUseId);
      if (mode === 'per-call' && slot.sandbox) await slot.sandbox.destroy().catch((err) => log.warn(`destroy failed: ${errorMessage(err)}`));
    }
  }

  private dropSessionSandbox(): void {
    const sb = this.sessionSandbox;
    this.sessionSandbox = null;
    this.sessionSandboxPrepared = false;
    if (sb) void sb.destroy().catch(() => {});
  }

  private async copySkills(sandbox: Sandbox): Promise<void> {
    const dir = this.opts.skillsDir;
    if (!dir) return;
    const files: PutFile[] = [];
    let total = 0;
    const walk = async (hostDir: string, rel: string): Promise<void> => {
      let entries: import('node:fs').Dirent[];
      try { entries = await fs.readdir(hostDir, { withFileTypes: true }); } catch { return; }
      for (const e of entries) {
        const hp = path.join(hostDir, e.name);
        const r = rel ? `${rel}/${e.name}` : e.name;
        if (e.isDirectory()) await walk(hp, r);
        else if (e.isFile()) {
          const st = await fs.stat(hp);
          total += st.size;
          if (total > MAX_SKILL_BYTES) { log.warn(`skills of session ${this.sessionId} exceed ${MAX_SKILL_BYTES} bytes; the rest is not copied`); return; }
          files.push({ path: `${SKILLS_GUEST_DIR}/${r}`, data: await fs.readFile(hp), mode: st.mode & 0o111 ? 0o755 : 0o644 });
        }
      }
    };
    await walk(dir, '');
    if (files.length) await sandbox.putFiles(files, []);
  }

  /** Destroys the session's sandbox (per-session mode). */
  async close(): Promise<void> {
    const sb = this.sessionSandbox;
    this.sessionSandbox = null;
    if (sb) await sb.destroy().catch(() => {});
    await this.runner.opts.persistence?.endSession?.(this.sessionId).catch((err: Error) => log.warn(`releasing session ${this.sessionId}'s prepared sandbox failed: ${err.message}`));
  }
}

/** A commit's changed paths as journaled with the call: at most CHANGE_PATHS in all, the rest counted in `more`. */
function persistChange(generation: number, changes: { added: string[]; changed: string[]; removed: string[] }): PersistChange {
  let room = CHANGE_PATHS;
  const take = (paths: string[]) => { const kept = paths.slice(0, room); room -= kept.length; return kept; };
  const added = take(changes.added); const changed = take(changes.changed); const removed = take(changes.removed);
  const more = changes.added.length + changes.changed.length + changes.removed.length - added.length - changed.length - removed.length;
  return { generation, added, changed, removed, more };
}
