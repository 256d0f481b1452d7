// The glob tool's matcher: picomatch in the doublestar dialect of the reference glob tool: `*` and `?` stay within
// one path segment, `**` spans segments, `[...]` classes (`[!...]`, `[^...]`, POSIX `[[:alpha:]]`), `{a,b}`
// alternatives and `{1..3}` ranges; dotfiles match. Invariants: a pattern is glob syntax only, never a regular
// expression: extglobs and a leading `!` are off, and `(`, `)` and `|` (which picomatch would pass into the regular
// expression) are escaped, so they match themselves as they do in file names. Patterns are relative POSIX paths;
// the tool rejects `..` segments before matching.
import picomatch from 'picomatch';

const OPTIONS: picomatch.PicomatchOptions = { dot: true, noextglob: true, nonegate: true, posix: true, strictSlashes: true, fastpaths: false };

/** `pattern` with `(`, `)` and `|` escaped (characters already escaped stay as they are). */
function literalRegexChars(pattern: string): string {
  let out = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '\\' && i + 1 < pattern.length) { out += c + pattern[++i]!; continue; }
    out += c === '(' || c === ')' || c === '|' ? `\\${c}` : c;
  }
  return out;
}

export function globToRegExp(pattern: string): RegExp {
  return picomatch.makeRe(literalRegexChars(pattern), OPTIONS);
}
