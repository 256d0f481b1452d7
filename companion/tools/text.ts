// Turning untrusted sandbox output into result text: valid UTF-8, no terminal escape sequences or other control
// characters (newline and tab kept), trailing newlines removed, never empty. Pure functions.
// eslint-disable-next-line no-control-regex
const ANSI_RE = /\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]/g;
// C0 controls except \t and \n, DEL, and C1 controls.
// eslint-disable-next-line no-control-regex
const CONTROL_RE = /[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]/g;

export const NO_OUTPUT = '(no output)';

export function cleanOutput(buf: Buffer | string): string {
  const text = typeof buf === 'string' ? buf : new TextDecoder('utf-8', { fatal: false }).decode(buf);
  return text.replace(/\r\n/g, '\n').replace(ANSI_RE, '').replace(CONTROL_RE, '\uFFFD');
}

export function trimTrailingNewlines(text: string): string { return text.replace(/\n+$/, ''); }

export function nonEmpty(text: string): string { return text.length > 0 ? text : NO_OUTPUT; }

/** Cuts a string to at most `maxBytes` UTF-8 bytes without splitting a character. */
export function truncateUtf8(text: string, maxBytes: number): { text: string; truncated: boolean } {
  const buf = Buffer.from(text, 'utf8');
  if (buf.length <= maxBytes) return { text, truncated: false };
  let end = maxBytes;
  while (end > 0 && (buf[end]! & 0xc0) === 0x80) end--;
  return { text: buf.subarray(0, end).toString('utf8'), truncated: true };
}
