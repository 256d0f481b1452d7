// Logging under systemd, with the built CLI: when JOURNAL_STREAM names its stderr, the worker sends each line to
// journald's native socket (here a Unix datagram socket the test binds with Python, standing in for journald) with
// PRIORITY and the call's PERIMETER_SESSION / PERIMETER_CALL / PERIMETER_TOOL fields, and writes none of them to stderr;
// without a native socket it writes `<N>`-prefixed lines; without JOURNAL_STREAM it logs as before.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, fstatSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { encodeEntry } from '../../companion/service/journald';
import { CLI, rmDir, tmpDir } from './helpers';

const RECEIVER = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("ready", flush=True)
while True:
    print(s.recv(1 << 20).hex(), flush=True)
`;

/** Decodes one native-protocol entry (the inverse of encodeEntry). */
function decodeEntry(buf: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let i = 0;
  while (i < buf.length) {
    const nl = buf.indexOf(0x0a, i);
    const line = buf.subarray(i, nl).toString();
    const eq = line.indexOf('=');
    if (eq >= 0) { out[line.slice(0, eq)] = line.slice(eq + 1); i = nl + 1; continue; }
    const len = Number(buf.readBigUInt64LE(nl + 1));
    out[line] = buf.subarray(nl + 9, nl + 9 + len).toString();
    i = nl + 9 + len + 1;
  }
  return out;
}

const SCENARIO = { name: 'journal', steps: [{ tool: 'bash', input: { command: 'echo to-the-journal' } }, { tool: 'write', input: { file_path: 'n.txt', content: 'x' } }] };

describe('journald logging (built CLI)', () => {
  let dir: string;
  const procs: ChildProcess[] = [];
  beforeEach(() => { dir = tmpDir('perimeter-journald-'); });
  afterEach(() => { for (const p of procs.splice(0)) if (p.exitCode === null) p.kill('SIGKILL'); rmDir(dir); });

  /** Starts `perimeter worker --local` with stderr on a file that JOURNAL_STREAM names (unless `journalStream` is false). */
  function startWorker(socket: string, journalStream = true): { proc: ChildProcess; stderrFile: string } {
    const scenario = path.join(dir, 'scenario.json');
    writeFileSync(scenario, JSON.stringify(SCENARIO));
    const stderrFile = path.join(dir, 'stderr.log');
    const fd = openSync(stderrFile, 'w');
    const st = fstatSync(fd);
    const proc = spawn(process.execPath, [CLI, 'worker', '--local', '--scenario', scenario, '--driver', 'process', '--no-control', '--home', path.join(dir, 'home')], {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: dir, PERIMETER_JOURNAL_SOCKET: socket, ...(journalStream ? { JOURNAL_STREAM: `${st.dev}:${st.ino}` } : {}) },
      stdio: ['ignore', 'ignore', fd],
    });
    closeSync(fd);
    procs.push(proc);
    return { proc, stderrFile };
  }

  async function waitUntil(check: () => boolean, what: string, ms = 60_000): Promise<void> {
    for (const end = Date.now() + ms; !check(); await new Promise((r) => setTimeout(r, 100))) if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
  }

  it('sends each line as a native entry with priority and the call\'s session, call and tool fields; nothing on stderr', async () => {
    const socket = path.join(dir, 'journal.sock');
    const receiver = spawn('python3', ['-c', RECEIVER, socket], { stdio: ['ignore', 'pipe', 'inherit'] });
    procs.push(receiver);
    const entries: Array<Record<string, string>> = [];
    let out = '';
    let ready = false;
    receiver.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const lines = out.split('\n');
      out = lines.pop()!;
      for (const l of lines) if (l === 'ready') ready = true; else entries.push(decodeEntry(Buffer.from(l, 'hex')));
    });
    await waitUntil(() => ready || receiver.exitCode !== null, 'the receiver');
    assert.equal(receiver.exitCode, null, 'the receiver runs');
    const { proc, stderrFile } = startWorker(socket);
    await waitUntil(() => entries.filter((e) => e.PERIMETER_TOOL).length >= 2, 'two call entries');
    proc.kill('SIGTERM');
    await new Promise((r) => proc.once('exit', r));
    const bash = entries.find((e) => e.PERIMETER_TOOL === 'bash')!;
    assert.match(bash.MESSAGE!, /\(bash\) done/);
    assert.equal(bash.PRIORITY, '6');
    assert.equal(bash.SYSLOG_IDENTIFIER, 'perimeter');
    assert.equal(bash.PERIMETER_COMPONENT, 'calls');
    assert.match(bash.PERIMETER_SESSION!, /^sesn_/);
    assert.match(bash.PERIMETER_CALL!, /^sevt_/);
    assert.ok(entries.some((e) => e.PERIMETER_TOOL === 'write' && e.PERIMETER_SESSION === bash.PERIMETER_SESSION));
    assert.ok(entries.some((e) => /local mode: dev queue/.test(e.MESSAGE ?? '') && e.PRIORITY === '6'), 'lines without a call have no call fields and still arrive');
    assert.equal(readFileSync(stderrFile, 'utf8').split('\n').filter((l) => /\(bash\) done/.test(l)).length, 0, 'no line is written twice');
  });

  it('without a native socket: `<N>`-prefixed lines on stderr; without JOURNAL_STREAM: the usual lines', async () => {
    const prefixed = startWorker(path.join(dir, 'no-such.sock'));
    await waitUntil(() => /\(write\) done/.test(readFileSync(prefixed.stderrFile, 'utf8')), 'the prefixed lines');
    prefixed.proc.kill('SIGTERM');
    await new Promise((r) => prefixed.proc.once('exit', r));
    const lines = readFileSync(prefixed.stderrFile, 'utf8').split('\n').filter(Boolean);
    assert.ok(lines.some((l) => /^<6>\[calls\] call \S+ \(bash\) done/.test(l)), lines.join('\n'));
    assert.ok(lines.every((l) => /^<\d>\[|^ {2}/.test(l)), 'every line carries its priority');

    const plain = startWorker(path.join(dir, 'no-such.sock'), false);
    await waitUntil(() => /\(write\) done/.test(readFileSync(plain.stderrFile, 'utf8')), 'the plain lines');
    plain.proc.kill('SIGTERM');
    await new Promise((r) => plain.proc.once('exit', r));
    assert.ok(readFileSync(plain.stderrFile, 'utf8').split('\n').some((l) => /^\d{4}-\d\d-\d\dT.* INFO  \[calls\] call \S+ \(bash\) done/.test(l)));
  });

  it('encodes values with newlines in the binary form', () => {
    const e = encodeEntry({ MESSAGE: 'two\nlines', PRIORITY: '3' });
    assert.deepEqual(decodeEntry(e), { MESSAGE: 'two\nlines', PRIORITY: '3' });
    assert.equal(e.subarray(0, 8).toString(), 'MESSAGE\n');
    assert.throws(() => encodeEntry({ 'bad name': 'x' }), /invalid journal field name/);
  });
});
