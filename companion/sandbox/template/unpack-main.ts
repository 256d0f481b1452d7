// The unpack jail's program (bundled to dist/guest/perimeter-unpack.js; unpack-jail.ts starts it inside bubblewrap
// as an unprivileged user): reads its request (JSON, argv[2]), unpacks the layers it was handed as file descriptors
// into <out>/rootfs.ext4 (unpack.ts) and writes <out>/report.json. Exit 0 on success; otherwise 1 with one line on
// stderr saying why (a limit, a broken archive).
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { UnpackRequestSchema, unpackRootfs } from './unpack';

async function main(): Promise<number> {
  const req = UnpackRequestSchema.parse(JSON.parse(process.argv[2] ?? '{}'));
  const report = await unpackRootfs(req);
  writeFileSync(path.join(req.out, 'report.json'), JSON.stringify(report));
  return 0;
}

main().then((code) => process.exit(code), (err: Error) => {
  process.stderr.write(`${err.message.split('\n').slice(0, 3).join(' ')}\n`);
  process.exit(1);
});
