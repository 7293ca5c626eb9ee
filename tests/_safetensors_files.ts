/** Helpers of the safetensors tests: temporary directories, byte patterns, files built by hand. */

/** UTF-8 bytes of a string. */
export const encode = (s: string): Uint8Array => new TextEncoder().encode(s);

/** Runs `fn` with a fresh temporary directory, removed afterwards. */
export async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "safetensors_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Deterministic bytes 0..255 starting at `seed`. */
export function pattern(length: number, seed: number): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (seed + i * 7) & 255);
}

/** A file built by hand: 8-byte LE length (or `length` if given), the header bytes, the data. */
export function rawFile(
  header: string | Uint8Array,
  data: Uint8Array = new Uint8Array(0),
  length?: bigint,
): Uint8Array {
  const h = typeof header === "string" ? encode(header) : header;
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, length ?? BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

/** The 8 little-endian bytes of a u64. */
export function le64(n: number): number[] {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n), true);
  return [...b];
}
