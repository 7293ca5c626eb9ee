/**
 * The limits that `cuda/include/qlora.h` states, read from the header's text and checked at their
 * boundaries against what the native functions accept and refuse (the backend of QLORA_BACKEND: run
 * it on the CPU and on `QLORA_BACKEND=cuda-emu`). A doc line that drifts from the checks fails here.
 */
import { assert, assertEquals } from "@std/assert";
import { loadLibrary, type NativeLibrary } from "../lib/native/library.ts";
import { CATEGORY, DTYPE, LEDGER_SNAPSHOT, QUANT_TYPE, STATUS, WEIGHT4 } from "../lib/native/abi.ts";

const HEADER = await Deno.readTextFile(new URL("../cuda/include/qlora.h", import.meta.url));

/** The header's text with comment continuation marks removed, so that a phrase may span lines. */
const DOC = HEADER.replace(/\n\s*\*\s?/g, " ").replace(/\s+/g, " ");

/** The first match of `pattern` in the header's docs; fails the test when the header does not say it. */
function stated(pattern: RegExp): RegExpExecArray {
  const m = pattern.exec(DOC);
  assert(m, `qlora.h no longer states ${pattern}`);
  return m;
}

/** The doc comment right above `qlora_<name>(`: from the comment opener before the last comment end. */
function docOf(name: string): string {
  const at = DOC.indexOf(` qlora_${name}(`);
  assert(at > 0, `qlora_${name} is not in the header`);
  const end = DOC.lastIndexOf("*/", at);
  return DOC.slice(DOC.lastIndexOf("/*", end), end);
}

/** Device buffers for one test, freed together; the ledger must be back where it started. */
class Buffers implements Disposable {
  #ptrs: Deno.PointerValue[] = [];
  #startBytes: bigint;
  constructor(readonly lib: NativeLibrary) {
    this.#startBytes = ledgerTotal(lib);
  }
  /** `bytes` of zeroed device memory under the workspace category. */
  zeros(bytes: number): Deno.PointerValue {
    const out = new BigUint64Array(1);
    const s = this.lib.symbols;
    assertEquals(s.qlora_malloc(out, BigInt(bytes), CATEGORY.WORKSPACE), STATUS.OK);
    const p = Deno.UnsafePointer.create(out[0]);
    this.#ptrs.push(p);
    assertEquals(s.qlora_memset(p, 0, BigInt(bytes)), STATUS.OK);
    return p;
  }
  [Symbol.dispose](): void {
    for (const p of this.#ptrs) assertEquals(this.lib.symbols.qlora_free(p), STATUS.OK);
    assertEquals(ledgerTotal(this.lib), this.#startBytes, "every buffer freed");
  }
}

function ledgerTotal(lib: NativeLibrary): bigint {
  const snap = new BigUint64Array(LEDGER_SNAPSHOT.size / 8);
  assertEquals(lib.symbols.qlora_memory_stats(snap), STATUS.OK);
  return snap[LEDGER_SNAPSHOT.offsets.total_current / 8];
}

function open(): NativeLibrary {
  const lib = loadLibrary();
  assertEquals(lib.symbols.qlora_init(), STATUS.OK);
  return lib;
}

/** Every power of two from lo / 4 to hi * 4, plus the even non-powers just inside the range. */
function blocksizeCandidates(lo: number, hi: number): number[] {
  const out = [0, lo - 2, lo + 2, lo + 16, hi - 2, hi + 2];
  for (let b = Math.max(1, lo / 4); b <= hi * 4; b *= 2) out.push(b);
  return out.filter((b) => b >= 0);
}

/** A `qlora_weight4` with plain absmax, NF4, as the native functions read it. */
function weight4(
  packed: Deno.PointerValue,
  absmax: Deno.PointerValue,
  blocksize: number,
): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(WEIGHT4.size), view = new DataView(bytes.buffer);
  view.setBigUint64(WEIGHT4.offsets.packed, Deno.UnsafePointer.value(packed), true);
  view.setBigUint64(WEIGHT4.offsets.absmax, Deno.UnsafePointer.value(absmax), true);
  view.setInt32(WEIGHT4.offsets.quant_type, QUANT_TYPE.NF4, true);
  view.setBigUint64(WEIGHT4.offsets.blocksize, BigInt(blocksize), true);
  return bytes;
}

Deno.test("blocksize: the stated power-of-two range is exactly what quantize and dequantize accept", () => {
  const m = stated(/blocksize \(a power of two in (\d+)\.\.(\d+)/);
  const lo = Number(m[1]), hi = Number(m[2]);
  assert(lo > 0 && (lo & (lo - 1)) === 0 && (hi & (hi - 1)) === 0 && lo < hi, "a range of powers of two");
  assert(/blocksize as for qlora_quantize_4bit/.test(docOf("dequantize_4bit")));
  const lib = open();
  using b = new Buffers(lib);
  const s = lib.symbols;
  const n = 4 * hi;
  const x = b.zeros(4 * n), packed = b.zeros(n / 2), absmax = b.zeros(4 * n), out = b.zeros(4 * n);
  for (const bs of blocksizeCandidates(lo, hi)) {
    const valid = bs >= lo && bs <= hi && (bs & (bs - 1)) === 0;
    const want = valid ? STATUS.OK : STATUS.INVALID_ARGUMENT;
    const q = s.qlora_quantize_4bit(x, DTYPE.F32, BigInt(n), QUANT_TYPE.NF4, BigInt(bs), packed, absmax);
    assertEquals(q, want, `quantize, blocksize ${bs}`);
    const d = s.qlora_dequantize_4bit(weight4(packed, absmax, bs), BigInt(n), out, DTYPE.F32);
    assertEquals(d, want, `dequantize, blocksize ${bs}`);
  }
  assert(/n \(> 0\)/.test(docOf("quantize_4bit")));
  const zero = s.qlora_quantize_4bit(x, DTYPE.F32, 0n, QUANT_TYPE.NF4, BigInt(lo), packed, absmax);
  assertEquals(zero, STATUS.INVALID_ARGUMENT, "n = 0");
  assertEquals(s.qlora_synchronize(), STATUS.OK);
});

Deno.test("nested blocksize: the stated power-of-two range is what double (de)quantization accepts", () => {
  const m = stated(/nested_blocksize \(a power of two in (\d+)\.\.(\d+)\)/);
  const lo = Number(m[1]), hi = Number(m[2]);
  assert(/nested_blocksize as for qlora_double_quantize/.test(docOf("double_dequantize")));
  const lib = open();
  using b = new Buffers(lib);
  const s = lib.symbols;
  const n = 4 * hi;
  const absmax = b.zeros(4 * n), codes = b.zeros(n), nested = b.zeros(4 * n), restored = b.zeros(4 * n);
  const offset = new Float32Array(1);
  for (const bs of blocksizeCandidates(lo, hi)) {
    const valid = bs >= lo && bs <= hi && (bs & (bs - 1)) === 0;
    const want = valid ? STATUS.OK : STATUS.INVALID_ARGUMENT;
    const q = s.qlora_double_quantize(absmax, BigInt(n), BigInt(bs), codes, nested, offset);
    assertEquals(q, want, `double quantize, nested blocksize ${bs}`);
    const d = s.qlora_double_dequantize(codes, nested, 0, BigInt(n), BigInt(bs), restored);
    assertEquals(d, want, `double dequantize, nested blocksize ${bs}`);
  }
  assertEquals(s.qlora_synchronize(), STATUS.OK);
});

Deno.test("GEMM dimensions: > 0 and below the stated 2^31 (checked through the workspace size)", () => {
  const m = stated(/m, n, k and batch are > 0, and m, n, k below 2\^(\d+)/);
  const limit = 2n ** BigInt(m[1]);
  assert(/m, n, k > 0 and below 2\^31/.test(docOf("gemm_4bit")));
  assert(/as for qlora_gemm_4bit/.test(docOf("gemm_4bit_workspace")));
  const s = open().symbols;
  const bytes = new BigUint64Array(1);
  for (const transW of [0, 1]) {
    for (
      const [mm, nn, kk, want] of [
        [limit - 1n, 64n, 64n, STATUS.OK],
        [limit, 64n, 64n, STATUS.INVALID_ARGUMENT],
        [64n, limit - 1n, 64n, STATUS.OK],
        [64n, limit, 64n, STATUS.INVALID_ARGUMENT],
        [64n, 64n, limit - 1n, STATUS.OK],
        [64n, 64n, limit, STATUS.INVALID_ARGUMENT],
        [0n, 64n, 64n, STATUS.INVALID_ARGUMENT],
        [64n, 0n, 64n, STATUS.INVALID_ARGUMENT],
        [64n, 64n, 0n, STATUS.INVALID_ARGUMENT],
      ] as const
    ) {
      const got = s.qlora_gemm_4bit_workspace(transW, mm, nn, kk, bytes);
      assertEquals(got, want, `trans_w ${transW}, m ${mm} n ${nn} k ${kk}`);
    }
    assertEquals(s.qlora_gemm_4bit_workspace(2, 64n, 64n, 64n, bytes), STATUS.INVALID_ARGUMENT, "trans_w 2");
  }
});

Deno.test("attention: head_dim up to the stated maximum, above it the stated status", () => {
  const m = stated(/head_dim <= (\d+), above is QLORA_ERR_(\w+)/);
  const max = Number(m[1]);
  const above = STATUS[m[2] as keyof typeof STATUS];
  assert(above !== undefined, `${m[2]} is a status`);
  const lib = open();
  using b = new Buffers(lib);
  const s = lib.symbols;
  const bytes = 4 * 2 * (max + 2);
  const q = b.zeros(bytes), k = b.zeros(bytes), v = b.zeros(bytes), out = b.zeros(bytes), lse = b.zeros(64);
  for (
    const [hd, want] of [[max, STATUS.OK], [max - 2, STATUS.OK], [max + 2, above], [
      0,
      STATUS.INVALID_ARGUMENT,
    ]]
  ) {
    const got = s.qlora_attention_forward(q, k, v, 1n, 2n, 1n, 1n, BigInt(hd), out, lse, DTYPE.F32);
    assertEquals(got, want, `head_dim ${hd}`);
  }
  assertEquals(s.qlora_synchronize(), STATUS.OK);
});

Deno.test("rope: head_dim even, as stated", () => {
  assert(/\(head_dim even\)/.test(docOf("rope")));
  const lib = open();
  using b = new Buffers(lib);
  const s = lib.symbols;
  const x = b.zeros(4 * 128);
  assertEquals(s.qlora_rope(x, 1n, 1n, 1n, 64n, 10000, 0, DTYPE.F32), STATUS.OK);
  assertEquals(s.qlora_rope(x, 1n, 1n, 1n, 63n, 10000, 0, DTYPE.F32), STATUS.INVALID_ARGUMENT);
  assertEquals(s.qlora_synchronize(), STATUS.OK);
});

Deno.test("dropout: p in the stated [0, 1)", () => {
  assert(/p in \[0, 1\)/.test(docOf("dropout")));
  const lib = open();
  using b = new Buffers(lib);
  const s = lib.symbols;
  const x = b.zeros(4 * 64);
  for (
    const [p, want] of [[0, STATUS.OK], [0.999, STATUS.OK], [1, STATUS.INVALID_ARGUMENT], [
      -0.01,
      STATUS.INVALID_ARGUMENT,
    ]]
  ) {
    assertEquals(s.qlora_dropout(x, x, DTYPE.F32, 64n, p, 1n), want, `p = ${p}`);
  }
  assertEquals(s.qlora_synchronize(), STATUS.OK);
});

Deno.test("embedding: vocab below the stated 2^31", () => {
  const m = stated(/vocab < 2\^(\d+)/);
  const limit = 2n ** BigInt(m[1]);
  const lib = open();
  using b = new Buffers(lib);
  const s = lib.symbols;
  const tokens = b.zeros(4), table = b.zeros(4 * 8), out = b.zeros(4 * 8);
  assertEquals(s.qlora_embedding_forward(tokens, 1n, table, limit - 1n, 8n, out, DTYPE.F32), STATUS.OK);
  assertEquals(
    s.qlora_embedding_forward(tokens, 1n, table, limit, 8n, out, DTYPE.F32),
    STATUS.INVALID_ARGUMENT,
  );
  assertEquals(s.qlora_synchronize(), STATUS.OK);
});

Deno.test("AdamW: the stated ranges of the hyperparameters", () => {
  const doc = docOf("adamw_step");
  assert(/beta1 and beta2 in \[0, 1\), eps > 0, bias corrections in \(0, 1\]/.test(doc), doc);
  const s = open().symbols;
  // count = 0: only the scalars are checked. Order: lr, beta1, beta2, eps, wd, bc1, bc2, grad_scale.
  const ok = [1e-3, 0.9, 0.999, 1e-8, 0, 0.1, 0.001, 1];
  const cases: [number, number, number][] = [
    [1, 0, STATUS.OK],
    [1, 1, STATUS.INVALID_ARGUMENT],
    [2, 0.999999, STATUS.OK],
    [2, 1, STATUS.INVALID_ARGUMENT],
    [3, 0, STATUS.INVALID_ARGUMENT],
    [5, 1, STATUS.OK],
    [5, 1.0001, STATUS.INVALID_ARGUMENT],
    [6, 0, STATUS.INVALID_ARGUMENT],
    [0, Infinity, STATUS.INVALID_ARGUMENT],
  ];
  for (const [i, value, want] of cases) {
    const a = [...ok];
    a[i] = value;
    const seg = new Uint8Array(8);
    const got = s.qlora_adamw_step(seg, 0n, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
    assertEquals(got, want, `scalar ${i} = ${value}`);
    const got8 = s.qlora_adamw8_step(seg, 0n, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
    assertEquals(got8, want, `8-bit, scalar ${i} = ${value}`);
  }
});
