// The grep tool's cases, run with the sandbox's `rg` and without it (the tool's own search): the process-driver and
// real-VM suites share them. Without rg means for real: rg is started with a PATH where it does not exist, so the
// driver or the guest agent fails to start it, exactly as on a machine or template without ripgrep.
import assert from 'node:assert/strict';
import type { GuestOps } from '../../companion/guest/types';
import { runTool, type ToolOutcome } from '../../companion/tools/semantics';

/** A tree with what rg treats specially: hidden entries, a binary file, a symlink, CRLF, no final newline, Unicode. */
export const GREP_TREE_SCRIPT = [
  'set -e',
  // relative to the bash tool's working directory, /workspace (the process driver does not map absolute paths)
  'mkdir -p g/s/.hidden g/deep/x/y g/node_modules/m g/big',
  'cd g',
  "printf 'def f():\\n    # TODO one\\n' > s/a.py",
  "printf 'TODO two\\n' > s/b.py",
  "printf 'TODO hidden\\n' > s/.hidden/h.txt",
  "printf 'TODO dotfile\\n' > .dot.txt",
  "printf 'TODO x\\0y\\nTODO z\\n' > s/bin.dat",
  "printf 'TODO crlf\\r\\nz\\r\\n' > s/crlf.txt",
  "printf 'last TODO' > s/nonl.txt",
  'ln -s b.py s/link.txt',
  "printf 'h\\xc3\\xa9llo TODO \\xc3\\xbcn\\xc3\\xaf\\n' > s/uni.txt",
  "printf 'a\\nunique-marker-7 deep\\n' > deep/x/y/z.txt",
  "printf 'TODO in node_modules\\n' > node_modules/m/x.js",
  "seq -f 'line %.0f' 1 30000 > big/nums.txt",
].join('\n');

export interface GrepCase { input: { pattern: string; path?: string }; expect: RegExp; error?: boolean }

const TRUNCATED = /\n\[output truncated: \d+ lines \(\d+ bytes\) omitted\]$/;

export const GREP_CASES: GrepCase[] = [
  { input: { pattern: 'TODO', path: 'g' }, expect: /^\/workspace\/g\/s\/a\.py:2: {4}# TODO one$/m },
  { input: { pattern: 'TODO', path: '/workspace/g/s' }, expect: /^\/workspace\/g\/s\/crlf\.txt:1:TODO crlf$/m },
  { input: { pattern: 'two', path: 'g/s/b.py' }, expect: /^1:TODO two$/ },
  { input: { pattern: 'unique-marker-7' }, expect: /^\/workspace\/g\/deep\/x\/y\/z\.txt:2:unique-marker-7 deep$/ },
  { input: { pattern: 'absent-word', path: 'g' }, expect: /^no matches$/ },
  { input: { pattern: '(?i)todo ONE', path: 'g' }, expect: /^\/workspace\/g\/s\/a\.py:2: {4}# TODO one$/ },
  { input: { pattern: '^TODO \\w+$', path: 'g/s' }, expect: /^\/workspace\/g\/s\/b\.py:1:TODO two$/ },
  { input: { pattern: 'TODO', path: 'g/s/bin.dat' }, expect: /^binary file matches \(found "\\0" byte around offset 6\)$/ },
  { input: { pattern: 'h.llo', path: 'g' }, expect: /^\/workspace\/g\/s\/uni\.txt:1:héllo TODO ünï$/ },
  { input: { pattern: 'line \\d+$', path: 'g/big/nums.txt' }, expect: TRUNCATED },
  { input: { pattern: 'line \\d+$', path: 'g/big' }, expect: TRUNCATED },
  { input: { pattern: '(', path: 'g' }, expect: /^grep: /, error: true },
];

/** `sandbox` as a machine without ripgrep sees it; `missing` counts the times rg could not be started. */
export function withoutRipgrep(sandbox: GuestOps): GuestOps & { missing: number } {
  const view: GuestOps & { missing: number } = {
    missing: 0,
    exec: async (req, onOutput) => {
      if (req.argv[0] !== 'rg') return sandbox.exec(req, onOutput);
      const r = await sandbox.exec({ ...req, env: { ...req.env, PATH: '/nonexistent' } }, onOutput);
      if (r.exitCode === 127) view.missing++;
      return r;
    },
    readFile: (p, o) => sandbox.readFile(p, o),
    writeFile: (p, d, o) => sandbox.writeFile(p, d, o),
    stat: (p) => sandbox.stat(p),
    walk: (r, o) => sandbox.walk(r, o),
    putFiles: (f, d) => sandbox.putFiles(f, d),
    getFiles: (p, o) => sandbox.getFiles(p, o),
  };
  return view;
}

/** Lines of a multi-file answer in a stable order (rg searches files in parallel); a trailing marker stays last. */
function comparable(o: ToolOutcome): string {
  const lines = o.text.split('\n');
  const marker = lines[lines.length - 1]!.startsWith('[') ? lines.pop()! : null;
  return [...lines.sort(), ...(marker ? [marker] : [])].join('\n');
}

/** Runs every case with rg and without it in `sandbox` and checks both answer alike (and as expected). */
export async function assertGrepSameWithoutRipgrep(sandbox: GuestOps, callTimeoutMs = 60_000): Promise<void> {
  const noRg = withoutRipgrep(sandbox);
  for (const c of GREP_CASES) {
    const label = JSON.stringify(c.input);
    const withRg = await runTool('grep', c.input, { sandbox, shell: { cwd: '/workspace', env: {} }, callTimeoutMs });
    const before = noRg.missing;
    const without = await runTool('grep', c.input, { sandbox: noRg, shell: { cwd: '/workspace', env: {} }, callTimeoutMs });
    assert.equal(noRg.missing, before + 1, `${label}: rg could not be started`);
    assert.match(withRg.text, c.expect, `${label} with rg`);
    assert.match(without.text, c.expect, `${label} without rg`);
    assert.equal(without.isError, withRg.isError, `${label}: is_error`);
    if (!c.error) {
      assert.equal(comparable(without), comparable(withRg), `${label}: the same answer`);
      assert.equal(without.exitCode, withRg.exitCode, `${label}: exit code`);
    }
  }
}
