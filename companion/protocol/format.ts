// Human-readable renderings shared by the companion's messages and the extension's views, so a size reads the same
// in a tool result, the CLI and the panel. Pure functions.

/** Bytes in binary units: `512 B`, `1.5 KiB`, `15 KiB`, `2.0 GiB` (one decimal below 10, none above). */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}
