// Keeps host paths out of everything the model reads. The call orchestrator passes every tool result (with its
// persistence notes and error texts) through `HostPathScrubber.scrub` before it is journaled and posted. The
// messages are already written in guest terms at their source; this is the boundary that catches what slips through.
// Invariants:
// - The companion's state directory becomes `<state dir>`; the home directory becomes `~`, except where it is also
//   a guest path (the guest's HOME, `/root`), where a text cannot tell the two apart.
// - A process-driver sandbox root (`…/perimeter-sbx-XXXXXX`, a host temp directory standing in for the guest's `/`)
//   becomes the guest path it stands for: `<root>/workspace/a` -> `/workspace/a`.
// - Only whole path components match: `/root` never matches inside `/rooted` or `/x/root`.
import os from 'node:os';
import { realpathSync } from 'node:fs';
import { SHELL_BASE_ENV } from '../guest/ready-shell';

/** Characters that continue a path component (a match must not end or start inside one). */
const COMPONENT = String.raw`[\w.~+@%-]`;
/** A process-driver sandbox root: `mkdtemp(<base>/perimeter-sbx-)` under any absolute base directory. */
const SANDBOX_ROOT = new RegExp(String.raw`(?<!${COMPONENT}|/)(?:/${COMPONENT}+)*/perimeter-sbx-[A-Za-z0-9]{6}(?!${COMPONENT})(/)?`, 'g');

function escape(s: string): string { return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'); }

/** A directory and, when it differs, its real path (a symlinked temp or home directory shows up either way). */
function spellings(dir: string): string[] {
  const out = new Set([dir]);
  try { out.add(realpathSync(dir)); } catch { /* not there (yet) */ }
  return [...out].filter((d) => d.length > 1).map((d) => (d.endsWith('/') ? d.slice(0, -1) : d));
}

export interface HostPathsOptions {
  /** The companion's state directory (config.home). */
  stateDir?: string;
  /** The user's home directory (default: os.homedir()). */
  homeDir?: string;
}

export class HostPathScrubber {
  private readonly rules: Array<{ pattern: RegExp; replacement: string }> = [];

  constructor(opts: HostPathsOptions = {}) {
    const literal: Array<[string, string]> = [];
    if (opts.stateDir) for (const d of spellings(opts.stateDir)) literal.push([d, '<state dir>']);
    const guestDirs = new Set(['/', SHELL_BASE_ENV.HOME]);
    for (const d of spellings(opts.homeDir ?? os.homedir())) if (!guestDirs.has(d)) literal.push([d, '~']);
    // Longest first: the state directory usually lies inside the home directory.
    literal.sort((a, b) => b[0].length - a[0].length);
    for (const [dir, replacement] of literal) {
      this.rules.push({ pattern: new RegExp(`(?<!${COMPONENT}|/)${escape(dir)}(?!${COMPONENT})`, 'g'), replacement });
    }
  }

  scrub(text: string): string {
    let out = text.replace(SANDBOX_ROOT, '/');
    for (const r of this.rules) out = out.replace(r.pattern, r.replacement);
    return out;
  }
}
