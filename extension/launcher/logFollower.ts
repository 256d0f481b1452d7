// Follows the local worker's log file (`<home>/worker.log`, which the detached worker writes as its stdout and
// stderr) and hands each new complete line to a sink, like `tail -F`. Plain Node, no `vscode`. Invariants:
// - Only bytes appended after the starting offset are read; a file that shrank or was replaced (a new inode after
//   rotation) is read again from its start.
// - Polling with fs.watchFile works on every filesystem; `poll()` reads what is there now (on demand, e.g. right
//   after the worker exited, so its last lines are not missed).
import { closeSync, fstatSync, openSync, readSync, statSync, unwatchFile, watchFile, type Stats } from 'node:fs';
import { StringDecoder } from 'node:string_decoder';
import { lineSplitter } from './workerHost';

const POLL_MS = 500;
const CHUNK = 64 * 1024;

export class LogFollower {
  private offset: number;
  private inode: number | null;
  private readonly decoder = new StringDecoder('utf8');
  private readonly split: (chunk: string) => void;
  private readonly onChange = () => this.poll();
  private watching = false;

  /** Follows what is appended to `file` from now on (all of it, if the file does not exist yet). */
  constructor(private readonly file: string, sink: (line: string) => void) {
    const st = statOrNull(file);
    this.offset = st?.size ?? 0;
    this.inode = st?.ino ?? null;
    this.split = lineSplitter(sink);
  }

  start(): void {
    if (this.watching) return;
    this.watching = true;
    watchFile(this.file, { interval: POLL_MS, persistent: false }, this.onChange);
  }

  poll(): void {
    let fd: number;
    try { fd = openSync(this.file, 'r'); } catch { return; }
    try {
      const st = fstatSync(fd);
      if (st.ino !== this.inode || st.size < this.offset) { this.inode = st.ino; this.offset = 0; }
      const buf = Buffer.alloc(CHUNK);
      while (this.offset < st.size) {
        const n = readSync(fd, buf, 0, Math.min(CHUNK, st.size - this.offset), this.offset);
        if (n <= 0) break;
        this.offset += n;
        this.split(this.decoder.write(buf.subarray(0, n)));
      }
    } finally { closeSync(fd); }
  }

  stop(): void {
    if (!this.watching) return;
    this.watching = false;
    unwatchFile(this.file, this.onChange);
  }
}

/** The last `lines` lines of a log file (reads at most its last 256 KiB); '' when there is none. */
export function tailLines(file: string, lines: number): string {
  let fd: number;
  try { fd = openSync(file, 'r'); } catch { return ''; }
  try {
    const size = fstatSync(fd).size;
    const len = Math.min(size, 256 * 1024);
    const buf = Buffer.alloc(len);
    const n = readSync(fd, buf, 0, len, size - len);
    const all = buf.subarray(0, n).toString('utf8').split('\n');
    if (all[all.length - 1] === '') all.pop();
    return all.slice(-lines).join('\n');
  } finally { closeSync(fd); }
}

function statOrNull(file: string): Stats | null {
  try { return statSync(file); } catch { return null; }
}
