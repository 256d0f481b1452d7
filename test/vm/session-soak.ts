// The session-disk soak (issue 11: "nothing lost, ever"): one session of N per-call VMs served by the real worker CLI
// (QEMU driver, session disk) from the dev queue, with the worker SIGKILLed (and restarted on the same home, as
// systemd would) and the call's QEMU killed at seeded random points. Used by test/vm/session-soak.test.ts (a CI-sized
// run) and by the bench's `soak` section (the full run).
// Each call is a bash script generated from a seeded PRNG (mulberry32): it prints the whole tree under /workspace/soak
// (sha256 of every file) and the call log, then writes, appends, copies, moves and deletes files (empty ones, identical
// ones, sometimes one of several MiB), sometimes pausing half-way, and appends its marker to the call log. Every step is
// a pure function of the tree it starts on (writes of fixed content, `rm -f`, moves only of files that exist), so the
// host models the tree for every outcome of a call.
// Kill points (the plan is seeded; where a kill lands depends on timing, the oracle does not): during the command,
// after its last line (the guest's seal, QEMU's stop), at the store's write of the call's generation record or of
// CURRENT (watched with inotify), and after its result while the scripted agent thinks (the dev queue's `thinkMs`:
// the idle worker, the next call's prepared VM). A kill that came before the agent made the next call must leave that
// call untouched (it is checked like any other).
// Oracle (zero tolerance): the tree a call prints equals the modelled tree exactly. For a call a kill interrupted
// (its result not yet posted when the kill came) the next printed tree must equal EITHER the tree before it OR the tree
// after it (never a mix), and the model adopts whichever it is. A call marker twice in the log is a re-run; every tool
// call is answered exactly once. A last call changes nothing and prints the tree the soak left. Kills are planned for
// no two calls in a row, but a kill lands on whichever call is running when it comes, so the oracle keeps every tree
// possible after a run of interrupted calls (before or after each) until a printed tree picks one.
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, watch, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { ControlClient } from '../../extension/launcher/controlClient';
import { delay } from '../../extension/launcher/workerHost';
import type { DevQueue } from '../../companion/devqueue/server';
import type { StepReport } from '../../companion/devqueue/player';
import { prng, type Rng } from '../unit/fuzz';
import { cmdlineOf, qemusUnder, startQemuWorker } from './helpers';
import { answeredOnce, connectControl, rmDir, scenario, startDevQueue, tmpDir, type Child } from '../worker/helpers';

export interface SoakOptions {
  calls: number;
  seed: number;
  /** Chance that a call gets a kill (planned for no two calls in a row). */
  killRate: number;
  log?: (line: string) => void;
}

export interface SoakResult {
  calls: number;
  workerKills: number;
  qemuKills: number;
  /** Kills that came before the agent made the next call (that call must then run as if nothing happened). */
  betweenCalls: number;
  /** Calls a kill interrupted (made, no result posted yet) that got no normal result, by what the next call saw:
   *  the tree after the call (it committed) or the tree before it. */
  interruptedCommitted: number;
  interruptedNotCommitted: number;
  /** Files the model holds that a call did not find. */
  lost: number;
  /** Files with other content than the model's, or present though deleted. */
  stale: number;
  /** Call markers found more than once in the call log, plus tool calls answered more than once. */
  reruns: number;
  /** Calls no kill touched that did not end normally (an error, no tree printed). */
  failedCalls: number;
  /** Tool calls the worker never answered. */
  unanswered: number;
  /** What went wrong first, for the report (empty when nothing did). */
  firstProblem: string;
  minutes: number;
}

// ---- the model of the tree --------------------------------------------------------------------------------------

/** A file: its sha256, and its content when small (appends need it). */
interface FileValue { sha: string; small: string | null }
interface Tree { files: Map<string, FileValue>; log: string[] }

const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
/** Every file content the model has made, by sha256 (to take over a tree a call printed that the model did not expect). */
const known = new Map<string, FileValue>();
const remember = (v: FileValue) => { known.set(v.sha, v); return v; };
const smallFile = (content: string): FileValue => remember({ sha: sha256(content), small: content });
const cloneTree = (t: Tree): Tree => ({ files: new Map(t.files), log: [...t.log] });

type Op =
  | { kind: 'write'; path: string; content: string }
  | { kind: 'append'; path: string; content: string }
  | { kind: 'big'; path: string; bytes: number; line: string }
  | { kind: 'rm'; path: string }
  | { kind: 'mv' | 'cp'; from: string; to: string }
  | { kind: 'pause'; seconds: number };

const ROOT = '/workspace/soak';
const LOG = 'calls.log';
const DIRS = ['', 'a/', 'a/b/', 'c/'];
const SMALL_NAMES = DIRS.flatMap((d) => Array.from({ length: 12 }, (_, i) => `${d}f${i}.txt`));
const BIG_NAMES = ['big0.bin', 'big1.bin', 'c/big2.bin'];
const MAX_SMALL = 36;
const MAX_BIG = 2;
const bigContent = (bytes: number, line: string) => Buffer.alloc(bytes, `${line}\n`);

function apply(tree: Tree, ops: Op[], marker: string): Tree {
  const t = cloneTree(tree);
  for (const op of ops) {
    switch (op.kind) {
      case 'write': t.files.set(op.path, smallFile(op.content)); break;
      case 'append': t.files.set(op.path, smallFile((t.files.get(op.path)?.small ?? '') + op.content)); break;
      case 'big': t.files.set(op.path, remember({ sha: sha256(bigContent(op.bytes, op.line)), small: null })); break;
      case 'rm': t.files.delete(op.path); break;
      case 'mv': case 'cp': {
        const v = t.files.get(op.from);
        if (!v) break;
        t.files.set(op.to, v);
        if (op.kind === 'mv') t.files.delete(op.from);
        break;
      }
      case 'pause': break;
    }
  }
  t.log.push(marker);
  return t;
}

const q = (p: string) => `'${ROOT}/${p}'`;
function opScript(op: Op): string {
  switch (op.kind) {
    case 'write': return op.content === '' ? `: > ${q(op.path)}` : `printf '%s' '${op.content}' > ${q(op.path)}`;
    case 'append': return `printf '%s' '${op.content}' >> ${q(op.path)}`;
    case 'big': return `yes '${op.line}' | head -c ${op.bytes} > ${q(op.path)}`;
    case 'rm': return `rm -f ${q(op.path)}`;
    case 'mv': return `if [ -e ${q(op.from)} ]; then mv -f ${q(op.from)} ${q(op.to)}; fi`;
    case 'cp': return `if [ -e ${q(op.from)} ]; then cp ${q(op.from)} ${q(op.to)}; fi`;
    case 'pause': return `sleep ${op.seconds}`;
  }
}

const WORDS = ['alpha', 'beta', 'gamma', 'delta', 'soak', 'disk', 'layer', 'commit', 'x', '0', '42'];
const text = (rng: Rng, maxWords: number) => Array.from({ length: rng.int(1, maxWords) }, () => rng.pick(WORDS)).join(' ');

/** The random changes of call `i`, chosen against `predicted` (the tree if every call so far committed). */
function randomOps(rng: Rng, predicted: Tree, i: number, bigMiB: [number, number]): Op[] {
  const ops: Op[] = [];
  const t = cloneTree(predicted);
  const smalls = () => [...t.files.keys()].filter((p) => SMALL_NAMES.includes(p));
  const bigs = () => [...t.files.keys()].filter((p) => BIG_NAMES.includes(p));
  const push = (op: Op) => { ops.push(op); t.files = apply(t, [op], '').files; };
  for (let n = rng.int(1, 6); n > 0; n--) {
    const r = rng.next();
    const existing = smalls();
    if (r < 0.3 || existing.length === 0) {
      const target = existing.length >= MAX_SMALL ? rng.pick(existing) : rng.pick(SMALL_NAMES);
      const kind = rng.next();
      // An empty file, a copy of another file's content (identical files), or new text.
      const content = kind < 0.15 ? '' : kind < 0.3 && existing.length ? (t.files.get(rng.pick(existing))!.small ?? '') : `${text(rng, 12)} c${i}`;
      push({ kind: 'write', path: target, content });
    } else if (r < 0.45) push({ kind: 'append', path: rng.pick(existing), content: ` +${text(rng, 3)}` });
    else if (r < 0.65) push({ kind: 'rm', path: rng.pick(existing) });
    else if (r < 0.85 && (r < 0.75 || existing.length < MAX_SMALL)) {
      const from = rng.pick(existing);
      push({ kind: r < 0.75 ? 'mv' : 'cp', from, to: rng.pick(SMALL_NAMES.filter((n) => n !== from)) });
    }
    else if (r < 0.9) push({ kind: 'pause', seconds: rng.pick([0.1, 0.3, 0.6]) });
    else if (r < 0.95) {
      const present = bigs();
      if (present.length >= MAX_BIG || (present.length && rng.next() < 0.4)) push({ kind: 'rm', path: rng.pick(present) });
      else push({ kind: 'big', path: rng.pick(BIG_NAMES), bytes: rng.int(bigMiB[0] << 20, bigMiB[1] << 20), line: `big c${i} ${rng.int(0, 1e6)}` });
    } else {
      const present = bigs();
      if (present.length === 1) push({ kind: 'cp', from: present[0]!, to: rng.pick(BIG_NAMES.filter((b) => b !== present[0])) });
      else push({ kind: 'write', path: rng.pick(SMALL_NAMES), content: '' });
    }
  }
  return ops;
}

const startMarker = (i: number) => `soak-start-${i}`;
const treeEnd = (i: number) => `soak-tree-end-${i}`;
const endMarker = (i: number) => `soak-end-${i}`;
const callMarker = (i: number) => `call-${i}`;

/** Call `i`'s bash script: print the tree and the log, change it, append the call's marker. */
function callScript(i: number, ops: Op[]): string {
  return [
    `echo ${startMarker(i)}`,
    `mkdir -p ${DIRS.map((d) => q(d)).join(' ')}`,
    `cd ${ROOT} && find . -type f ! -path ./${LOG} -print0 | sort -z | xargs -0 -r sha256sum`,
    `echo --log--; cat ${q(LOG)} 2>/dev/null; echo ${treeEnd(i)}`,
    ...ops.map(opScript),
    `echo ${callMarker(i)} >> ${q(LOG)}`,
    `echo ${endMarker(i)}`,
  ].join('\n');
}

/** The tree call `i` printed, or null when its output does not hold it whole. */
function parsePrinted(i: number, output: string | null): { files: Map<string, string>; log: string[] } | null {
  if (!output) return null;
  const start = output.indexOf(`${startMarker(i)}\n`);
  const end = output.indexOf(treeEnd(i));
  if (start < 0 || end < 0) return null;
  const [sums, log] = output.slice(start + startMarker(i).length + 1, end).split('--log--\n') as [string, string?];
  const files = new Map<string, string>();
  for (const line of sums.split('\n').filter(Boolean)) {
    const m = /^([0-9a-f]{64}) {2}\.\/(.+)$/.exec(line);
    if (!m) return null;
    files.set(m[2]!, m[1]!);
  }
  return { files, log: (log ?? '').split('\n').filter(Boolean) };
}

/** Differences between a printed tree and a modelled one: files lost, files stale (other content, or resurrected). */
function compare(printed: Map<string, string>, model: Tree): { lost: string[]; stale: string[] } {
  const lost = [...model.files.keys()].filter((p) => !printed.has(p));
  const stale = [...printed.entries()].filter(([p, sha]) => model.files.get(p)?.sha !== sha).map(([p]) => p);
  return { lost, stale };
}
const sameLog = (a: string[], b: string[]) => a.length === b.length && a.every((x, k) => x === b[k]);

// ---- the run ------------------------------------------------------------------------------------------------------

/** A step the worker answered (the dev queue judged its result). */
const answered = (s: StepReport) => s.status === 'passed' || s.status === 'failed';

/** When a kill comes: `delayMs` after the call printed its first (`start`) or last (`end`) line, or after its result
 *  (`answered`: the agent then thinks longer than that before the next call), or at once when the session's store
 *  writes the call's generation record (`record`) or replaces CURRENT with it (`current`). */
type Kill = { kind: 'worker' | 'qemu'; after: 'start' | 'end' | 'answered' | 'record' | 'current'; delayMs: number };
/** How long the agent thinks before a call that follows an `answered` kill (longer than any such delay). */
const THINK_AFTER_KILL_MS = 2500;

/** One call of the plan: its changes, how long the agent thinks before it, and whether (and when) a kill comes. */
export interface CallPlan { ops: Op[]; thinkMs: number; kill: Kill | null }

/** The soak's calls, fixed by the seed; the last one changes nothing (it prints the tree the soak left). */
export function planSoak(o: Pick<SoakOptions, 'calls' | 'seed' | 'killRate'>): CallPlan[] {
  const rng = prng(o.seed);
  const plans: CallPlan[] = [];
  let predicted: Tree = { files: new Map(), log: [] };
  let thinkNext = false;
  for (let i = 0; i < o.calls; i++) {
    const ops = randomOps(rng, predicted, i, [2, 6]);
    predicted = apply(predicted, ops, callMarker(i));
    const thinkMs = thinkNext ? THINK_AFTER_KILL_MS : rng.next() < 0.2 ? rng.int(300, 2000) : 0;
    const killed = i > 0 && plans[i - 1]!.kill === null && rng.next() < o.killRate;
    const after = rng.pick(['start', 'start', 'end', 'end', 'answered', 'record', 'current'] as const);
    // Within the command, the seal, the commit's steps, between calls (the idle worker, the next call's prepared VM).
    const delayMs = after === 'start' ? rng.int(0, 500) : after === 'end' ? (rng.next() < 0.7 ? rng.int(0, 200) : rng.int(200, 1500))
      : after === 'answered' ? rng.int(0, THINK_AFTER_KILL_MS - 1000) : 0;
    // QEMU is gone by the time the store writes (the VM is destroyed first): a QEMU kill there hits the next VM.
    const kind = rng.next() < (after === 'record' || after === 'current' ? 0.8 : 0.5) ? 'worker' : 'qemu';
    plans.push({ ops, thinkMs, kill: killed ? { kind, after, delayMs } : null });
    thinkNext = killed && after === 'answered';
  }
  plans.push({ ops: [], thinkMs: thinkNext ? THINK_AFTER_KILL_MS : 0, kill: null });
  return plans;
}

/** Runs the soak; cleans up everything it started (worker, VMs, dev queue, home). */
export async function runSessionSoak(o: SoakOptions): Promise<SoakResult> {
  const log = o.log ?? (() => {});
  const t0 = Date.now();
  const plans = planSoak(o);

  const result: SoakResult = { calls: o.calls, workerKills: 0, qemuKills: 0, betweenCalls: 0, interruptedCommitted: 0, interruptedNotCommitted: 0, lost: 0, stale: 0, reruns: 0, failedCalls: 0, unanswered: 0, firstProblem: '', minutes: 0 };
  const problem = (what: string) => { if (!result.firstProblem) result.firstProblem = what; log(`soak: ${what}`); };
  const dq: DevQueue = await startDevQueue({ leaseTtlSeconds: 5 });
  const home = tmpDir('perimeter-soak-');
  writeFileSync(path.join(home, 'config.json'), JSON.stringify({}));
  // The running worker and its control connection (replaced after each worker kill).
  const live: { worker: Child | null; client: ControlClient | null } = { worker: null, client: null };
  // Markers the calls printed (streamed over the control API), and who waits for one.
  const seen = new Set<string>();
  const waiters = new Map<string, () => void>();
  const start = async () => {
    live.worker = startQemuWorker(dq, home);
    live.client = await connectControl(home, live.worker);
    live.client.onEvent((e) => {
      if (e.type !== 'call.output') return;
      for (const [m] of e.chunk.matchAll(/soak-(?:start|end)-\d+/g)) { seen.add(m); waiters.get(m)?.(); }
    });
  };
  const printedOrAnswered = (sid: string, i: number, marker: string) => Promise.race([
    new Promise<void>((resolve) => { if (seen.has(marker)) resolve(); else waiters.set(marker, resolve); }),
    dq.waitFor(() => answered(dq.report(sid).steps[i]!), 600_000, `call ${i} to print ${marker}`),
  ]).finally(() => waiters.delete(marker));
  /** Resolves when the session's store writes its next generation record or CURRENT, or call `i` is answered first. */
  const commitStep = (sid: string, i: number, step: 'record' | 'current') => new Promise<void>((resolve) => {
    const dir = path.join(home, 'disks', sid);
    const watcher = watch(dir);
    const next = `gen-${Number(readFileSync(path.join(dir, 'CURRENT'), 'utf8')) + 1}.json`;
    const done = () => { watcher.close(); resolve(); };
    watcher.on('change', (_type, name) => { if (String(name) === (step === 'current' ? 'CURRENT' : next)) done(); });
    dq.waitFor(() => answered(dq.report(sid).steps[i]!), 600_000, `call ${i} to be answered`).then(done, done);
  });
  const interrupted = new Set<number>();
  try {
    await start();
    const sid = dq.createSession(scenario(plans.map((p, i) => ({ label: `soak call ${i}`, tool: 'bash', input: { command: callScript(i, p.ops) }, thinkMs: p.thinkMs }))));
    // The call a kill interrupts: the first one unanswered, if the agent has already made it (a call not yet made
    // cannot be in the worker's hands, so a kill before it must leave it untouched: a kill between calls).
    const unfinished = () => {
      const steps = dq.report(sid).steps;
      const k = steps.findIndex((s) => !answered(s));
      return k >= 0 && steps[k]!.toolUseId !== null ? k : -1;
    };
    for (let i = 0; i < plans.length; i++) {
      const kill = plans[i]!.kill;
      if (kill) {
        const marker = kill.after === 'end' ? endMarker(i) : startMarker(i);
        await printedOrAnswered(sid, i, marker);
        if (kill.after === 'answered') await dq.waitFor(() => answered(dq.report(sid).steps[i]!), 600_000, `call ${i} to be answered`);
        if (kill.after === 'record' || kill.after === 'current') await commitStep(sid, i, kill.after);
        await delay(kill.delayMs);
        const when = kill.after === 'record' || kill.after === 'current' ? `at the ${kill.after === 'record' ? 'generation record' : 'CURRENT'} write of call ${i}`
          : `${kill.delayMs} ms after ${kill.after === 'answered' ? `the result of call ${i}` : marker}`;
        if (kill.kind === 'worker') {
          const victim = unfinished();
          live.client?.close();
          live.worker!.proc.kill('SIGKILL');
          await live.worker!.exit;
          result.workerKills++;
          if (victim >= 0) interrupted.add(victim); else result.betweenCalls++;
          log(`soak: worker SIGKILLed ${when} (${victim >= 0 ? `call ${victim} unfinished` : 'between calls'})`);
          await start();
        } else {
          const qemu = await callQemu(home);
          const victim = unfinished();
          if (qemu) {
            process.kill(qemu, 'SIGKILL');
            result.qemuKills++;
            if (victim >= 0) interrupted.add(victim); else result.betweenCalls++;
            log(`soak: QEMU SIGKILLed ${when} (${victim >= 0 ? `call ${victim} unfinished` : 'between calls'})`);
          } else log(`soak: no QEMU with the session disk to kill ${when}`);
        }
      }
      await dq.waitFor(() => answered(dq.report(sid).steps[i]!), 600_000, `call ${i} to be answered`);
      if (i % 25 === 24) log(`soak: ${i + 1}/${o.calls} calls, ${Math.round((Date.now() - t0) / 1000)} s`);
    }
    await dq.waitFor(() => dq.report(sid).finished, 60_000, 'the session to finish');

    // The oracle: replay the calls against the model. `candidates`: the trees the next call may find; a call that
    // was interrupted (or failed) doubles them (its tree before, its tree after), each remembering which of those
    // calls it assumes committed until a printed tree picks one.
    const steps = dq.report(sid).steps;
    let candidates: Array<{ tree: Tree; committed: number; notCommitted: number }> = [{ tree: { files: new Map(), log: [] }, committed: 0, notCommitted: 0 }];
    const reran = new Set<string>();
    for (let i = 0; i < plans.length; i++) {
      const step = steps[i]!;
      const printed = parsePrinted(i, step.text);
      if (printed) {
        for (const m of printed.log.filter((x, k) => printed.log.indexOf(x) !== k)) reran.add(m);
        const calls = [...new Set(printed.log)];
        const match = candidates.find(({ tree }) => { const d = compare(printed.files, tree); return sameLog(tree.log, calls) && !d.lost.length && !d.stale.length; });
        if (match) {
          result.interruptedCommitted += match.committed;
          result.interruptedNotCommitted += match.notCommitted;
          candidates = [{ tree: match.tree, committed: 0, notCommitted: 0 }];
        } else {
          const nearest = candidates[candidates.length - 1]!.tree;
          const d = compare(printed.files, nearest);
          result.lost += d.lost.length;
          result.stale += d.stale.length;
          problem(`call ${i} found a tree matching none of the ${candidates.length} possible (the previous call's changes: ${JSON.stringify(plans[i - 1]?.ops)}): lost ${JSON.stringify(d.lost)}, stale ${JSON.stringify(d.stale)}, call log ${sameLog(nearest.log, calls) ? 'as expected' : `ends ${JSON.stringify(calls.slice(-3))}, expected ${JSON.stringify(nearest.log.slice(-3))}`}`);
          // Go on from what the call found, so one loss is counted once.
          const found: Tree = { files: new Map([...printed.files].map(([p, sha]) => [p, known.get(sha) ?? { sha, small: null }])), log: calls };
          candidates = [{ tree: found, committed: 0, notCommitted: 0 }];
        }
      }
      const endedNormally = !step.isError && (step.text ?? '').includes(endMarker(i)) && printed !== null;
      if (!interrupted.has(i) && !endedNormally) {
        result.failedCalls++;
        problem(`call ${i} (no kill) did not end normally: ${JSON.stringify((step.text ?? '').slice(-300))}`);
      }
      const ops = plans[i]!.ops;
      candidates = endedNormally
        ? candidates.map((c) => ({ ...c, tree: apply(c.tree, ops, callMarker(i)) }))
        : candidates.flatMap((c) => [{ ...c, notCommitted: c.notCommitted + 1 }, { ...c, tree: apply(c.tree, ops, callMarker(i)), committed: c.committed + 1 }]);
      if (candidates.length > 64) throw new Error(`too many calls in a row were interrupted (at call ${i}) to tell the trees apart`);
    }
    const ids = steps.map((s) => s.toolUseId).filter((x): x is string => x !== null);
    const once = answeredOnce(dq, ids);
    result.unanswered = once.missing.length + (plans.length - ids.length);
    result.reruns = reran.size + once.duplicated.length;
    if (reran.size) problem(`calls run more than once: ${[...reran].join(', ')}`);
    if (once.duplicated.length) problem(`tool calls answered more than once: ${once.duplicated.join(', ')}`);
    if (result.unanswered) problem(`${result.unanswered} tool calls were never answered`);
    return result;
  } finally {
    result.minutes = Math.round((Date.now() - t0) / 600) / 100;
    live.client?.close();
    const w = live.worker;
    if (w && w.proc.exitCode === null && w.proc.signalCode === null) { w.proc.kill('SIGTERM'); await w.exit; }
    await dq.close();
    rmDir(home);
  }
}

/** The pid of the QEMU holding the session disk (a VM with a layer attached: `disk/` in its run directory). */
async function callQemu(home: string): Promise<number | null> {
  for (let tries = 0; tries < 40; tries++) {
    for (const line of qemusUnder(home)) {
      const pid = line.split(':')[0]!;
      const runDir = new RegExp(`(${home}/vms/vm-[^/\\s]+)`).exec(cmdlineOf(pid) ?? '')?.[1];
      if (runDir && existsSync(path.join(runDir, 'disk'))) return Number(pid);
    }
    await delay(50);
  }
  return null;
}
