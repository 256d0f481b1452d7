// A small doublestar glob matcher for the glob tool (Node 20 has no fs.glob): `*` and `?` stay within one path
// segment, `**` spans segments, `[...]` classes and `{a,b}` alternatives are supported. Patterns are relative
// POSIX paths; `..` segments are rejected by the tool before matching.
function escapeRe(c: string): string { return /[\\^$.*+?()[\]{}|/]/.test(c) ? `\\${c}` : c; }

export function globToRegExp(pattern: string): RegExp {
  let re = '';
  let i = 0;
  let braceDepth = 0;
  while (i < pattern.length) {
    const c = pattern[i]!;
    if (c === '*') {
      if (pattern[i + 1] === '*') {
        const atSegStart = i === 0 || pattern[i - 1] === '/';
        const atSegEnd = i + 2 === pattern.length || pattern[i + 2] === '/';
        if (atSegStart && atSegEnd) {
          if (pattern[i + 2] === '/') { re += '(?:[^/]*/)*'; i += 3; } else { re += '.*'; i += 2; }
          continue;
        }
        re += '[^/]*'; i += 2; continue;
      }
      re += '[^/]*'; i++; continue;
    }
    if (c === '?') { re += '[^/]'; i++; continue; }
    if (c === '[') {
      const close = pattern.indexOf(']', i + 2);
      if (close > 0) {
        let body = pattern.slice(i + 1, close);
        if (body.startsWith('!')) body = `^${body.slice(1)}`;
        re += `[${body.replace(/\\/g, '\\\\')}]`;
        i = close + 1;
        continue;
      }
      re += '\\['; i++; continue;
    }
    if (c === '{') { braceDepth++; re += '(?:'; i++; continue; }
    if (c === '}' && braceDepth > 0) { braceDepth--; re += ')'; i++; continue; }
    if (c === ',' && braceDepth > 0) { re += '|'; i++; continue; }
    if (c === '\\' && i + 1 < pattern.length) { re += escapeRe(pattern[i + 1]!); i += 2; continue; }
    re += escapeRe(c);
    i++;
  }
  while (braceDepth-- > 0) re += ')';
  return new RegExp(`^${re}$`);
}
