// Building `ssh` command lines for a remote worker host. Plain Node, no `vscode`. Invariants (see
// security-and-reliability.md §7.2):
// - ssh always runs from an argv array (never a shell). `--` precedes the destination; a host must match
//   HOST_PATTERN (so it cannot start with `-`, contain spaces, quotes or shell metacharacters); nothing
//   user-controlled becomes an `-o` option.
// - The remote command is one of the fixed scripts in REMOTE_SCRIPTS. The only variable part is the remote base
//   directory, which must match REMOTE_DIR_PATTERN (relative to $HOME, no `..`), so it needs no quoting. The state
//   directory is the companion's own default on that host (what a command typed there uses), never a setting.
//   Everything else (the environment key, the launch file, the companion bundle) travels on stdin.
// - Options: -T (no tty), BatchMode (never prompt), keepalives, a connect timeout; host keys are checked as the
//   user's ssh configuration says (we never pass StrictHostKeyChecking=no).
import { readFileSync } from 'node:fs';

/** The largest template upload (template file plus the files it copies in, as a tar archive) sent to an SSH host. */
export const TEMPLATE_UPLOAD_MAX_BYTES = 64 * 1024 * 1024;

/** A template name or hash as the `templateRemove` script accepts it (it refuses anything else itself, too). */
export const TEMPLATE_NAME_OR_HASH = /^(?!-)[A-Za-z0-9._-]{1,128}$/;

export const HOST_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9._@-]*$/;
export const REMOTE_DIR_PATTERN = /^(?!.*(^|\/)\.\.(\/|$))[A-Za-z0-9._][A-Za-z0-9._/-]*$/;

export class SshInputError extends Error {
  constructor(message: string) { super(message); this.name = 'SshInputError'; }
}

export function validateHost(host: string): string {
  if (host.startsWith('-')) throw new SshInputError(`refusing SSH host "${host}": it starts with "-" and would be read as an option`);
  if (!HOST_PATTERN.test(host) || host.length > 253) {
    throw new SshInputError(`refusing SSH host ${JSON.stringify(host)}: use a host name, user@host, or an alias from ~/.ssh/config (letters, digits, . _ - @)`);
  }
  return host;
}

export function validateRemoteDir(dir: string): string {
  if (!REMOTE_DIR_PATTERN.test(dir) || dir.length > 200) {
    throw new SshInputError(`refusing remote directory ${JSON.stringify(dir)}: it must be a path relative to the remote home (letters, digits, . _ - /, no "..")`);
  }
  return dir.replace(/\/+$/, '');
}

export interface SshTarget {
  host: string;
  /** An ssh_config file to use instead of ~/.ssh/config (`ssh -F`). */
  configFile?: string;
  /** Remote base directory relative to $HOME (default `.perimeter`) whose bin/ holds the bundle (the state lives in
   *  the companion's default state directory, see PRELUDE). */
  remoteDir: string;
}

/**
 * Opens every remote script: `$D` is the validated base directory under $HOME (the bundle lives in `$D/bin`), `$H`
 * the companion's state directory, resolved exactly as the companion resolves its default (config.ts `defaultHome`:
 * $PERIMETER_HOME, else $XDG_STATE_HOME/perimeter, else ~/.local/state/perimeter), so a worker started from VS Code
 * and a command typed on the host (`node ~/.perimeter/bin/perimeter.js template build`) share templates, cache and
 * sessions. State an older extension kept in `$D/home` is moved to `$H` once, by a rename on the same filesystem (a
 * worker still running there keeps working through the symlink left in its place); when it cannot be moved, or while
 * another script is moving it, `$D/home` stays in use so no state is lost.
 */
const PRELUDE = 'D="$HOME/$PERIMETER_DIR"; H="${PERIMETER_HOME:-${XDG_STATE_HOME:-$HOME/.local/state}/perimeter}"; ' +
  'case "$H" in /*) ;; *) H="$HOME/$H" ;; esac; ' +
  'if [ -d "$D/home" ] && [ ! -L "$D/home" ] && [ ! -e "$H" ]; then mkdir -p "${H%/*}"; ' +
  'A=$(stat -c %d "$D/home" 2>/dev/null); B=$(stat -c %d "${H%/*}" 2>/dev/null); ' +
  'if [ -n "$A" ] && [ "$A" = "$B" ] && mv -T "$D/home" "$H" 2>/dev/null; then ln -s "$H" "$D/home"; elif [ ! -e "$H" ]; then H="$D/home"; fi; fi; ';

/** Finds the companion's systemd service: S is user, system or none, U the matching systemctl option. */
const SERVICE_SCOPE = 'if systemctl --user cat perimeter.service >/dev/null 2>&1; then S=user; U=--user; ' +
  'elif systemctl cat perimeter.service >/dev/null 2>&1; then S=system; U=; else S=none; fi; ';
const NEED_SERVICE = 'if [ "$S" = none ]; then echo "no perimeter service on this host" >&2; exit 4; fi; ';

/** The fixed remote scripts, each run after PRELUDE. */
const SCRIPTS = {
  /** Prints the installed bundle's VERSION line (or nothing) and the remote Node version. */
  probe: 'cat "$D/bin/VERSION" 2>/dev/null || echo none; command -v node >/dev/null && node --version || echo no-node',
  /** Replaces $D/bin with the tar archive on stdin (atomically: unpack beside it, then swap). */
  install: 'set -e; mkdir -p "$D"; rm -rf "$D/bin.new"; mkdir "$D/bin.new"; tar -xf - -C "$D/bin.new"; ' +
    'rm -rf "$D/bin.old"; if [ -d "$D/bin" ]; then mv "$D/bin" "$D/bin.old"; fi; mv "$D/bin.new" "$D/bin"; rm -rf "$D/bin.old"; cat "$D/bin/VERSION"',
  /** Writes the worker's launch file (JSON on stdin, companion/protocol/launch.ts) to $H/launch.json with mode 0600. */
  writeLaunch: 'set -e; umask 077; mkdir -p "$H"; cat > "$H/launch.json.new"; mv "$H/launch.json.new" "$H/launch.json"',
  /** Starts a detached worker for a real environment; the first stdin line is the environment key. The key stays in
   *  the shell's memory and reaches the worker through a pipe (printf is a shell builtin: no argv exposure), never
   *  its environment. Prints the worker's PID. */
  startEnvironment: 'umask 077; mkdir -p "$H"; IFS= read -r KEY; cd "$H"; ' +
    'printf "%s\\n" "$KEY" | nohup node "$D/bin/perimeter.js" worker --home "$H" --launch "$H/launch.json" --key-stdin >> "$H/worker.log" 2>&1 & KEY=; echo "started $!"',
  /** Starts a detached worker for a launch that needs no key (the embedded dev queue: no account). Prints its PID. */
  startLocalQueue: 'umask 077; mkdir -p "$H"; cd "$H"; ' +
    'nohup node "$D/bin/perimeter.js" worker --home "$H" --launch "$H/launch.json" < /dev/null >> "$H/worker.log" 2>&1 & echo "started $!"',
  /** Exit 0 while the process whose PID is the first stdin line runs, 3 once it is gone; the PID must be all digits. */
  alive: 'IFS= read -r P; case "$P" in ""|*[!0-9]*) exit 2;; esac; kill -0 "$P" 2>/dev/null || exit 3',
  /** Prints control.json when its worker process is alive; exit 3 = no worker. */
  endpoint: 'F="$H/control.json"; [ -f "$F" ] || exit 3; ' +
    'P=$(sed -n \'s/.*"pid":\\([0-9][0-9]*\\).*/\\1/p\' "$F"); [ -n "$P" ] && kill -0 "$P" 2>/dev/null || exit 3; cat "$F"',
  /** Waits (up to 45 s) for the process whose PID is the first stdin line to exit; the PID must be all digits. */
  waitExit: 'IFS= read -r P; case "$P" in ""|*[!0-9]*) exit 2;; esac; i=0; ' +
    'while kill -0 "$P" 2>/dev/null; do i=$((i+1)); [ "$i" -ge 450 ] && exit 1; sleep 0.1; done; exit 0',
  /** Which systemd service runs the companion here (`perimeter service install`): prints user, system or none. */
  serviceScope: `${SERVICE_SCOPE}echo "$S"`,
  /** Start, stop and the status (with its last log lines) of that service; exit 4 when there is none. */
  serviceStart: `${SERVICE_SCOPE}${NEED_SERVICE}systemctl $U start perimeter.service`,
  serviceStop: `${SERVICE_SCOPE}${NEED_SERVICE}systemctl $U stop perimeter.service`,
  serviceStatus: `${SERVICE_SCOPE}${NEED_SERVICE}systemctl $U status perimeter.service --no-pager --full --lines=200; true`,
  /** The last 200 lines of the remote worker log. */
  log: 'tail -n 200 "$H/worker.log" 2>/dev/null || true',
  doctor: 'node "$D/bin/perimeter.js" doctor --json --home "$H"',
  /** Checks an environment against the API from this host: the key is the first stdin line, the ID the second (only
   *  letters, digits, "_" and "-", or the script refuses it); the key reaches the CLI through a pipe, as for a start. */
  checkEnvironment: 'IFS= read -r KEY; IFS= read -r ID; case "$ID" in ""|-*|*[!A-Za-z0-9_-]*) echo "refusing environment id" >&2; exit 2;; esac; ' +
    'printf "%s\\n" "$KEY" | node "$D/bin/perimeter.js" environment check --environment-id "$ID" --key-stdin --json --home "$H"; S=$?; KEY=; exit $S',
  /** Builds the template; the first stdin line names the VM size (small, medium or large; empty: the host's configuration). */
  templateBuild: 'IFS= read -r S; case "$S" in "") set --;; small|medium|large) set -- --vm-size "$S";; *) echo "refusing VM size" >&2; exit 2;; esac; ' +
    'node "$D/bin/perimeter.js" template build --home "$H" "$@"',
  /** The host's templates as JSON rows (companion/protocol/template.ts TemplateListSchema). */
  templateList: 'node "$D/bin/perimeter.js" template ls --json --home "$H"',
  /** Removes a template: its name or hash is the first stdin line (letters, digits, ".", "_", "-", not starting with
   *  "-"), the second is empty or `force`. */
  templateRemove: 'IFS= read -r R; IFS= read -r O; case "$R" in ""|-*|*[!A-Za-z0-9._-]*) echo "refusing template name" >&2; exit 2;; esac; ' +
    'case "$O" in "") set --;; force) set -- --force;; *) echo "refusing option" >&2; exit 2;; esac; ' +
    'node "$D/bin/perimeter.js" template rm "$R" --home "$H" "$@"',
  /**
   * Builds a template file sent from the extension. stdin: the template file's name (letters, digits, ".", "_", "-",
   * ending in .json, .yaml or .yml), the byte count of the tar archive that follows (at most TEMPLATE_UPLOAD_MAX_BYTES),
   * then the archive: the template file and the files it copies in, at their paths relative to it. It is unpacked into a
   * fresh private directory under the state directory (mktemp: mode 0700; removed when the script ends) and built
   * there with `--json` progress, under the login's own umask (the VM's uid must read what the build writes). stdin
   * stays open for the build: when it ends (the extension cancelled, or the connection dropped) the build gets
   * SIGTERM, which ends what it started and keeps nothing of it (companion/commands/template.ts).
   */
  templateBuildFile: 'IFS= read -r F; IFS= read -r N; ' +
    'case "$F" in ""|-*|.*|*[!A-Za-z0-9._-]*) echo "refusing template file name" >&2; exit 2;; *.json|*.yaml|*.yml) ;; *) echo "refusing template file name" >&2; exit 2;; esac; ' +
    `case "$N" in ""|*[!0-9]*) echo "refusing upload size" >&2; exit 2;; esac; if [ "\${#N}" -gt 10 ] || [ "$N" -gt ${TEMPLATE_UPLOAD_MAX_BYTES} ]; then echo "refusing upload size" >&2; exit 2; fi; ` +
    '(umask 077; mkdir -p "$H"); T=$(mktemp -d "$H/template-upload.XXXXXX") || exit 1; trap \'rm -rf "$T"\' EXIT; trap "exit 129" HUP; trap "exit 143" TERM; ' +
    'head -c "$N" | tar -x -p --no-same-owner -f - -C "$T" || { echo "could not unpack the uploaded template file" >&2; exit 1; }; ' +
    '[ -f "$T/$F" ] || { echo "the upload holds no template file $F" >&2; exit 1; }; exec 3<&0; ' +
    'node "$D/bin/perimeter.js" template build -f "$T/$F" --json --home "$H" </dev/null & B=$!; ' +
    '{ while IFS= read -r _ <&3; do :; done; kill -TERM "$B"; } >/dev/null 2>&1 & W=$!; ' +
    'wait "$B"; S=$?; kill "$W" 2>/dev/null; exit $S',
} as const;

export const REMOTE_SCRIPTS = Object.fromEntries(Object.entries(SCRIPTS).map(([name, body]) => [name, PRELUDE + body])) as Record<keyof typeof SCRIPTS, string>;
export type RemoteScript = keyof typeof SCRIPTS;

/** Options every invocation gets: never prompt, detect dead links, no tty. */
export function baseOptions(target: SshTarget): string[] {
  const args = ['-T', '-o', 'BatchMode=yes', '-o', 'ServerAliveInterval=15', '-o', 'ServerAliveCountMax=3', '-o', 'ConnectTimeout=15'];
  if (target.configFile) args.unshift('-F', target.configFile);
  return args;
}

/** argv (without the `ssh` program) that runs one fixed remote script. */
export function scriptArgs(target: SshTarget, script: RemoteScript): string[] {
  const host = validateHost(target.host);
  const dir = validateRemoteDir(target.remoteDir);
  return [...baseOptions(target), '--', host, `PERIMETER_DIR=${dir} sh -c '${REMOTE_SCRIPTS[script].replace(/'/g, `'\\''`)}'`];
}

/** argv that prints the configuration ssh would use for the host (`ssh -G`: resolved host name, port, known_hosts). */
export function resolveArgs(target: SshTarget): string[] {
  return [...baseOptions(target), '-G', '--', validateHost(target.host)];
}

/** argv for a port forward only: local 127.0.0.1:localPort -> remote 127.0.0.1:remotePort. */
export function tunnelArgs(target: SshTarget, localPort: number, remotePort: number): string[] {
  const host = validateHost(target.host);
  for (const p of [localPort, remotePort]) if (!Number.isInteger(p) || p < 1 || p > 65535) throw new SshInputError(`bad port ${p}`);
  return [...baseOptions(target), '-N', '-o', 'ExitOnForwardFailure=yes', '-L', `127.0.0.1:${localPort}:127.0.0.1:${remotePort}`, '--', host];
}

/** Host aliases from an ssh_config file (`Host` lines without wildcards or negations). */
export function sshConfigHosts(text: string): string[] {
  const hosts = new Set<string>();
  for (const raw of text.split('\n')) {
    const m = /^\s*Host\s+(.+)$/i.exec(raw.replace(/#.*/, ''));
    if (!m) continue;
    for (const h of m[1]!.trim().split(/\s+/)) if (!/[*?!]/.test(h) && HOST_PATTERN.test(h)) hosts.add(h);
  }
  return [...hosts];
}

export function readSshConfigHosts(file: string): string[] {
  try { return sshConfigHosts(readFileSync(file, 'utf8')); } catch { return []; }
}
