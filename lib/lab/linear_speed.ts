/**
 * How fast a 4-bit linear layer runs against the 16-bit one it replaces, measured in one run: the bf16
 * product `x Wᵀ`, the library's fused 4-bit product (each block of W decoded where it is multiplied,
 * never stored), and the naive route the original document has in mind when it calls QLoRA inference
 * "slightly slower (due to dequantization)": W dequantized to bf16, then the bf16 product.
 *
 * Decoding a token reads every weight once, so the 4-bit product is bounded by memory and can be faster
 * than bf16 by the ratio of the bytes read, 16 / bits per weight (3.88 for NF4 with double quantization);
 * a prompt of many tokens is bounded by the multiply, where the decode has to hide behind it.
 *
 * @module
 */

import { type Device, matmul, matmul4bit, quantize, type QuantType, Tensor } from "../core/mod.ts";
import { InvalidArgumentError } from "../base/mod.ts";

/** What {@linkcode measureLinearSpeed} measures and how long it may take. */
export interface LinearSpeedOptions {
  /** The 4-bit type (default nf4). */
  quantType?: QuantType;
  /** Double-quantized constants (default true). */
  doubleQuant?: boolean;
  /** Timed repetitions per case, the median kept (default 5; fewer when a case exceeds `maxMsPerCase`). */
  reps?: number;
  /** Time a case may take in all, in ms (default 2000): at least one repetition always runs. */
  maxMsPerCase?: number;
  /**
   * Copies of W (random, different seeds) the calls take in turn (default 4). A model's decode step reads
   * each weight from memory once; one W timed again and again stays in the last-level cache when it fits
   * (LLaMA-2-7B's up_proj is 23 MB in NF4, 90 MB in bf16, against a 32 MB L3 here), and the 4-bit product
   * would be timed at cache speed against a bf16 one read from memory.
   */
  copies?: number;
}

/** One row of x: the median times of the three products and the 4-bit ones' speed against bf16. */
export interface LinearSpeedRow {
  /** Rows of x (tokens). */
  tokens: number;
  /** bf16 `x Wᵀ`, ms. */
  bf16Ms: number;
  /** The fused 4-bit product, ms. */
  fusedMs: number;
  /** Dequantize W to bf16, then the bf16 product, ms. */
  dequantizeMs: number;
  /** bf16Ms / fusedMs: above 1, the 4-bit layer is faster. */
  fusedSpeedup: number;
  /** bf16Ms / dequantizeMs. */
  dequantizeSpeedup: number;
}

/** The result: per token count, and the byte ratio that bounds decoding. */
export interface LinearSpeed {
  /** [out, in] of W. */
  shape: [number, number];
  /** Bits a weight of the 4-bit layer takes, codes and constants. */
  bitsPerWeight: number;
  /** 16 / bitsPerWeight: the 4-bit layer's best speedup where reading W is the whole cost. */
  idealDecodeSpeedup: number;
  /** One row per token count, in the order given. */
  rows: LinearSpeedRow[];
}

function medianMs(device: Device, run: () => void, reps: number, budgetMs: number): number {
  run(); // warm: first-call costs (oneDNN's primitive, page faults) are not the product's
  device.synchronize();
  const times: number[] = [];
  const start = performance.now();
  while (times.length < reps && (times.length === 0 || performance.now() - start < budgetMs)) {
    const t = performance.now();
    run();
    device.synchronize();
    times.push(performance.now() - t);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

/**
 * Times `x Wᵀ` for a random bf16 W of `shape` ([out, in]) and random bf16 x of each token count: in bf16,
 * fused 4-bit, and dequantize-then-multiply, each the median of a few repetitions, on `device`, the calls
 * taking `copies` copies of W in turn (so that W comes from memory, as in a model). The buffers it makes
 * are freed before it returns.
 *
 * @example
 * ```ts
 * import { getDevice, measureLinearSpeed } from "../../mod.ts";
 * import { assert, assertEquals } from "@std/assert";
 * const speed = measureLinearSpeed(getDevice(), [96, 128], [1, 16], { reps: 1 });
 * assertEquals(speed.rows.map((r) => r.tokens), [1, 16]);
 * assert(speed.rows.every((r) => r.fusedMs > 0 && r.bf16Ms > 0));
 * // NF4 with double quantization: about 4.13 bits a weight, so decoding can be at most ~3.9x faster.
 * assert(speed.idealDecodeSpeedup > 3.8 && speed.idealDecodeSpeedup < 3.88);
 * ```
 */
export function measureLinearSpeed(
  device: Device,
  shape: [number, number],
  tokens: readonly number[],
  options: LinearSpeedOptions = {},
): LinearSpeed {
  const what = "measure a linear layer's speed";
  const [out, inp] = shape;
  for (
    const [name, v] of [
      ["out", out],
      ["in", inp],
      ...tokens.map((t) => ["tokens", t] as const),
      ["copies", options.copies ?? 4],
    ] as const
  ) {
    if (!Number.isSafeInteger(v) || v <= 0) {
      throw new InvalidArgumentError(`Cannot ${what}: ${name} must be a positive integer, got ${v}`);
    }
  }
  const reps = options.reps ?? 5, budget = options.maxMsPerCase ?? 2000, copies = options.copies ?? 4;
  const ws: Tensor[] = [], qs: ReturnType<typeof quantize>[] = [];
  using _free = {
    [Symbol.dispose]: () => [...ws, ...qs].forEach((t) => t.dispose()),
  };
  for (let i = 0; i < copies; i++) {
    ws.push(Tensor.randn([out, inp], { std: 0.02, dtype: "bf16", device, seed: 1 + i }));
    qs.push(
      quantize(ws[i], { quantType: options.quantType ?? "nf4", doubleQuant: options.doubleQuant ?? true }),
    );
  }
  const q = qs[0];
  let turn = 0; // the copy of the next call
  const next = () => turn++ % copies;
  const rows = tokens.map((t) => {
    using x = Tensor.randn([t, inp], { dtype: "bf16", device, seed: t });
    const bf16Ms = medianMs(device, () => matmul(x, ws[next()], { transB: true }).dispose(), reps, budget);
    const fusedMs = medianMs(
      device,
      () => matmul4bit(x, qs[next()], { transW: true }).dispose(),
      reps,
      budget,
    );
    const dequantizeMs = medianMs(
      device,
      () => {
        using wd = qs[next()].dequantize({ dtype: "bf16" });
        matmul(x, wd, { transB: true }).dispose();
      },
      reps,
      budget,
    );
    return {
      tokens: t,
      bf16Ms,
      fusedMs,
      dequantizeMs,
      fusedSpeedup: bf16Ms / fusedMs,
      dequantizeSpeedup: bf16Ms / dequantizeMs,
    };
  });
  return {
    shape: [out, inp],
    bitsPerWeight: q.bitsPerParameter,
    idealDecodeSpeedup: 16 / q.bitsPerParameter,
    rows,
  };
}
