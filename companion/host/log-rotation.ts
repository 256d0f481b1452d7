// The companion's log file, rotated by size. A launcher starts a worker with stdout and stderr appended to
// `<home>/worker.log` (extension/launcher/localHost.ts; over SSH the start script's `>> "$H/worker.log" 2>&1`), so the
// file is opened once, by the launcher, and the companion cannot reopen it. Rotation is therefore copy-and-truncate:
// once the file is above `maxBytes`, its content is copied to `<file>.1` (replacing the one before) and the file is
// truncated to zero; every writer opened it with O_APPEND, so each goes on at the new end. Invariants:
// - Only a regular file open in append mode is rotated: a terminal, a pipe, a deleted file, or a file opened without
//   O_APPEND (whose writers would go on at their old offset, leaving a hole) is left alone.
// - The copy and the truncation are one synchronous step of this process, whose log lines are written synchronously,
//   so none of its lines is lost; the two files together hold at most about 2 × maxBytes.
import { copyFileSync, fstatSync, ftruncateSync, readFileSync, readlinkSync } from 'node:fs';
import { addLogSink, logger } from '../log';

export const LOG_ROTATE_BYTES = 16 * 1024 * 1024;
/** Bytes of log lines between two looks at the file's size. */
const CHECK_EVERY_BYTES = 64 * 1024;
const O_APPEND = 0o2000;

/** The file behind `fd` when it is a regular file open for appending, else null. */
export function appendedFile(fd: number): string | null {
  try {
    if (!fstatSync(fd).isFile()) return null;
    const flags = /^flags:\s*([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
    if (!flags || (Number.parseInt(flags[1]!, 8) & O_APPEND) === 0) return null;
    const file = readlinkSync(`/proc/self/fd/${fd}`);
    return file.startsWith('/') && !file.endsWith(' (deleted)') ? file : null;
  } catch { return null; }
}

let installed = false;

/** Rotates the file stderr appends to, if it is one, whenever it grows past `maxBytes`. Idempotent. */
export function rotateStderrLog(maxBytes: number = LOG_ROTATE_BYTES): void {
  if (installed) return;
  const file = appendedFile(2);
  if (!file) return;
  installed = true;
  const rotateIfLarge = () => {
    try {
      if (fstatSync(2).size <= maxBytes) return;
      copyFileSync(file, `${file}.1`);
      ftruncateSync(2, 0);
    } catch (err) {
      logger('log').warn(`cannot rotate ${file}: ${(err as Error).message}`);
    }
  };
  rotateIfLarge();
  let sinceCheck = 0;
  addLogSink((record) => {
    sinceCheck += record.message.length + 64;
    if (sinceCheck < CHECK_EVERY_BYTES) return;
    sinceCheck = 0;
    rotateIfLarge();
  });
}
