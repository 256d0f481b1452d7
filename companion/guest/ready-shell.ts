// The guest's ready shell: one `bash` the agent keeps started ahead of need (in the template snapshot, and again
// after each call that used one), so a bash tool call skips fork, exec and dynamic linking, which under TCG are most
// of a small command's cost. The agent (perimeter-agent.c, 'Z' frame) starts READY_SHELL_ARGV and hands it an exec
// whose argv is SHELL_ARGV_PREFIX + [script] when the environment and cwd allow; anything else takes the fork/exec
// path. Invariants of the bootstrap below:
// - It runs the script as `bash --noprofile --norc -c script` would, in the same process image: cwd (physical, like a
//   fresh bash), exported environment (exactly the request's, plus PWD, SHLVL=1 and a valueless exported OLDPWD, as
//   bash itself adds; the request sets at least the names of READY_SHELL_ENV), $0,
//   $LINENO from 1, BASH_EXECUTION_STRING = the script, options, traps and exit status; RANDOM is reseeded from the
//   agent's fresh entropy and SECONDS restarts, so clones of one snapshot do not share them. It leaves no variable,
//   function or file descriptor of its own behind. The one visible difference: a syntax error is reported as
//   `bash: eval: ...` without `-c: line N:`.
// - It is one line (so the script's $LINENO counts from 1) and uses builtins only (no fork).
// - fd 3: wake pipe (one byte = go; EOF = exit quietly); fd 4: memfd holding the request as NUL-terminated fields
//   (cwd, RANDOM seed, script, "1" if the environment is the shell's own else "0", NAME=VALUE...); fd 5: one byte,
//   then closed, when the shell is ready to be claimed.

export const SHELL_ARGV_PREFIX: readonly string[] = ['/bin/bash', '--noprofile', '--norc', '-c'];

/** The environment every bash tool call starts from (the session's exported variables are added to it). */
export const SHELL_BASE_ENV: Readonly<Record<string, string>> = {
  PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  HOME: '/root',
  TERM: 'dumb',
  LANG: 'C.UTF-8',
};

/**
 * The ready shell's own environment when it starts: the tools' base environment, so a call with exactly that
 * environment (the agent says so in the request) has nothing to export, and the locale is loaded ahead (a first
 * setlocale reads and parses locale files, tens of ms under TCG). The agent hands the shell only requests that set
 * every one of these names (a fresh bash given none of them sets some defaults of its own, e.g. TERM=dumb).
 */
export const READY_SHELL_ENV: Readonly<Record<string, string>> = SHELL_BASE_ENV;

export const READY_SHELL_BOOTSTRAP = [
  'builtin echo -n r >&5',
  'exec 5>&-',
  'IFS= read -r -N 1 -u 3 __perimeter_go || builtin exit 0',
  "mapfile -d '' -t -u 4 __perimeter_req",
  'exec 3<&- 4<&-',
  // Already there (the agent starts it in /, where the tools' calls run): nothing to do, as for a fresh bash.
  '[[ "${__perimeter_req[0]}" == "$PWD" ]] || { builtin cd -P -- "${__perimeter_req[0]}" || builtin exit 127; builtin unset -v OLDPWD; builtin export OLDPWD; }',
  'RANDOM=${__perimeter_req[1]}',
  'SECONDS=0',
  // Field 3 is "1" when the request's environment is exactly the one this shell started with.
  '[[ "${__perimeter_req[3]}" == 1 ]] || for __perimeter_go in "${__perimeter_req[@]:4}"; do builtin export -- "$__perimeter_go"; done',
  'BASH_EXECUTION_STRING=${__perimeter_req[2]}',
  'builtin unset -v __perimeter_go __perimeter_req',
  'builtin eval "$BASH_EXECUTION_STRING"',
].join('; ');

export const READY_SHELL_ARGV: readonly string[] = [...SHELL_ARGV_PREFIX, READY_SHELL_BOOTSTRAP];

/** The argv the bash tool runs: a ready shell can take it. */
export function shellArgv(script: string): string[] {
  return [...SHELL_ARGV_PREFIX, script];
}
