// Seeded generators for the fuzz tests: the egress tests' PRNG (mulberry32, so a failing case reproduces from its seed) and byte
// mutations of valid inputs (flips, truncations, extensions, splices, random lengths written over length fields).
import { prng, type Rng } from '../egress/helpers/hello';

export { prng, type Rng };

/** One to four random mutations of `input`. */
export function mutate(input: Buffer, rng: Rng): Buffer {
  let b: Buffer = Buffer.from(input);
  for (let n = rng.int(1, 4); n > 0; n--) {
    switch (rng.int(0, 6)) {
      case 0: if (b.length) b[rng.int(0, b.length - 1)] ^= 1 << rng.int(0, 7); break;
      case 1: if (b.length) b[rng.int(0, b.length - 1)] = rng.pick([0, 0x7f, 0x80, 0xff, 0x0a, 0x22, 0x5c]); break;
      case 2: b = b.subarray(0, rng.int(0, b.length)); break;
      case 3: b = Buffer.concat([b, rng.bytes(rng.int(1, 16))]); break;
      case 4: { const at = rng.int(0, b.length); b = Buffer.concat([b.subarray(0, at), rng.bytes(rng.int(1, 8)), b.subarray(at)]); break; }
      case 5: if (b.length >= 4) b.writeUInt32BE(rng.pick([0, 1, 0x7fffffff, 0xffffffff, rng.int(0, 1 << 20)]), rng.int(0, b.length - 4)); break;
      default: { const from = rng.int(0, b.length); const len = rng.int(0, Math.min(16, b.length - from)); b = Buffer.concat([b, b.subarray(from, from + len)]); }
    }
  }
  return b;
}
