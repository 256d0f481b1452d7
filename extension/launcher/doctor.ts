// Reads `perimeter doctor --json` output for the not-ready states the welcome views explain (no KVM, no template).
// Plain Node, no `vscode`. Tolerant by design: it looks for checks by name (an array of {name|id, ok|status, ...}
// or an object keyed by check name) so it keeps working as checks are added; unknown means "not known", never "bad".
export interface DoctorFacts { kvm: boolean | undefined; template: boolean | undefined; problems: string[] }

interface Check { name: string; ok: boolean | undefined; detail: string }

function asChecks(json: unknown): Check[] {
  const root = (json && typeof json === 'object' ? json : {}) as Record<string, unknown>;
  const list = Array.isArray(root.checks) ? root.checks : Array.isArray(json) ? json : null;
  const entries: Array<[string, unknown]> = list
    ? list.map((c) => [String((c as Record<string, unknown>)?.name ?? (c as Record<string, unknown>)?.id ?? ''), c])
    : Object.entries((root.checks && typeof root.checks === 'object' ? root.checks : root) as Record<string, unknown>);
  return entries.map(([name, c]) => {
    const o = (c && typeof c === 'object' ? c : { ok: c }) as Record<string, unknown>;
    const ok = typeof o.ok === 'boolean' ? o.ok : typeof o.status === 'string' ? o.status === 'ok' || o.status === 'pass' : undefined;
    const detail = [o.message, o.detail, o.fix].filter((x) => typeof x === 'string').join(' ');
    return { name: name.toLowerCase(), ok, detail };
  });
}

export function readDoctor(json: unknown): DoctorFacts {
  const checks = asChecks(json);
  const find = (word: string) => checks.find((c) => c.name.includes(word));
  return {
    kvm: find('kvm')?.ok,
    template: find('template')?.ok,
    problems: checks.filter((c) => c.ok === false).map((c) => c.detail ? `${c.name}: ${c.detail}` : c.name),
  };
}
