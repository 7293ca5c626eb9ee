/**
 * Tensor operations that layers are built from: matrix multiplication (dense and by a 4-bit matrix),
 * `alpha * x + beta * y`, dropout and uniform fills. Shapes and dtypes are checked here, before any
 * native call; the native library checks them again.
 *
 * @module
 */

import type { FloatDType } from "./dtype.ts";
import { InvalidArgumentError } from "../base/mod.ts";
import * as ffi from "../native/mod.ts";
import type { Category } from "./memory.ts";
import type { QuantizedTensor } from "./quant.ts";
import { fillOrDispose, Tensor } from "./tensor.ts";

/** Options of {@linkcode matmul}. */
export interface MatmulOptions {
  /** Use Aᵀ (A stored k x m). */
  transA?: boolean;
  /** Use Bᵀ (B stored n x k). */
  transB?: boolean;
  /** Scale of the product (default 1). */
  alpha?: number;
  /** Scale of the old `out` added to the product (default 0: `out` is overwritten). */
  beta?: number;
  /** Where to write (default: a new tensor). Required when beta != 0. */
  out?: Tensor;
  /** dtype of a new output (default: the inputs' dtype). */
  dtype?: FloatDType;
  /** Category of a new output (default "activations"). */
  category?: Category;
}

function matrixDims(t: Tensor, name: string, what: string): { batch: number; rows: number; cols: number } {
  if (t.shape.length < 2 || t.shape.length > 3) {
    throw new InvalidArgumentError(
      `Cannot ${what}: ${name} must be 2-D or 3-D (batched), got shape [${t.shape.join(", ")}]`,
    );
  }
  const [rows, cols] = t.shape.slice(-2);
  return { batch: t.shape.length === 3 ? t.shape[0] : 1, rows, cols };
}

function ensureGemmDtype(t: Tensor, name: string, what: string): asserts t is Tensor & { dtype: FloatDType } {
  if (t.dtype !== "f32" && t.dtype !== "bf16") {
    throw new InvalidArgumentError(`Cannot ${what}: ${name} must be f32 or bf16, got ${t.dtype}`);
  }
}

function outputFor(
  shape: number[],
  options: { out?: Tensor; beta?: number; dtype?: FloatDType; category?: Category },
  like: Tensor,
  what: string,
): Tensor {
  if (options.out) {
    ensureGemmDtype(options.out, "out", what);
    if (options.out.shape.join() !== shape.join()) {
      throw new InvalidArgumentError(
        `Cannot ${what}: out has shape [${options.out.shape.join(", ")}], expected [${shape.join(", ")}]`,
      );
    }
    if (options.out.device !== like.device) {
      throw new InvalidArgumentError(`Cannot ${what}: out is on another device`);
    }
    return options.out;
  }
  if ((options.beta ?? 0) !== 0) {
    throw new InvalidArgumentError(`Cannot ${what}: beta != 0 needs an out tensor`);
  }
  const dtype = options.dtype ?? (like.dtype as FloatDType);
  if (dtype !== "f32" && dtype !== "bf16") {
    throw new InvalidArgumentError(`Cannot ${what}: dtype must be f32 or bf16`);
  }
  return Tensor.empty(shape, { dtype, category: options.category ?? "activations", device: like.device });
}

/**
 * `out = alpha * op(a) @ op(b) + beta * out` for 2-D matrices, or batches of them (3-D, a leading batch
 * dimension; a 2-D operand is shared by every matrix of the batch). Accumulates in f32.
 *
 * @example
 * ```ts
 * import { matmul, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using a = Tensor.from([1, 2, 3, 4], { shape: [2, 2] });
 * using b = Tensor.from([1, 0, 0, 1], { shape: [2, 2] });
 * using c = matmul(a, b, { transB: true });
 * assert(c.toFloat32()[3] === 4);
 * ```
 */
export function matmul(a: Tensor, b: Tensor, options: MatmulOptions = {}): Tensor {
  const what = "multiply matrices";
  ensureGemmDtype(a, "A", what);
  ensureGemmDtype(b, "B", what);
  if (a.dtype !== b.dtype) {
    throw new InvalidArgumentError(`Cannot ${what}: A is ${a.dtype} but B is ${b.dtype}`);
  }
  if (a.device !== b.device) {
    throw new InvalidArgumentError(`Cannot ${what}: A and B are on different devices`);
  }
  const da = matrixDims(a, "A", what), db = matrixDims(b, "B", what);
  const [m, ka] = options.transA ? [da.cols, da.rows] : [da.rows, da.cols];
  const [kb, n] = options.transB ? [db.cols, db.rows] : [db.rows, db.cols];
  if (ka !== kb) {
    throw new InvalidArgumentError(
      `Cannot ${what}: op(A) is ${m} x ${ka} but op(B) is ${kb} x ${n} (inner dimensions differ)`,
    );
  }
  if (da.batch !== db.batch && da.batch !== 1 && db.batch !== 1) {
    throw new InvalidArgumentError(`Cannot ${what}: batch sizes ${da.batch} and ${db.batch} differ`);
  }
  const batch = Math.max(da.batch, db.batch);
  const shape = batch > 1 || a.shape.length === 3 || b.shape.length === 3 ? [batch, m, n] : [m, n];
  const out = outputFor(shape, options, a, what);
  return fillOrDispose(out, () =>
    ffi.gemm(
      a.device,
      options.transA ?? false,
      options.transB ?? false,
      m,
      n,
      ka,
      options.alpha ?? 1,
      a,
      b,
      a.dtype,
      options.beta ?? 0,
      out,
      out.dtype,
      batch,
      da.batch > 1 ? m * ka : 0,
      db.batch > 1 ? ka * n : 0,
      m * n,
    ), !options.out);
}

/** Options of {@linkcode matmul4bit}. */
export interface Matmul4bitOptions {
  /** true: `x @ Wᵀ` (forward of a linear layer, W is out x in); false: `x @ W` (input gradient). */
  transW: boolean;
  /** Scale of the product (default 1). */
  alpha?: number;
  /** Scale of the old `out` (default 0). */
  beta?: number;
  /** Where to write (default: a new tensor). */
  out?: Tensor;
  /** dtype of a new output (default: x's dtype). */
  dtype?: FloatDType;
  /** Category of a new output (default "activations"). */
  category?: Category;
  /**
   * A LoRA layer's bypass added in the same call (`transW` true): `out += scaling * (x Aᵀ) Bᵀ`, with
   * `h = x Aᵀ` written (kept for the backward pass). A `[rank, in]`, B `[out, rank]`, h `[rows, rank]`, all in
   * x's dtype.
   */
  lora?: { a: Tensor; b: Tensor; h: Tensor; scaling: number };
}

/**
 * `out = alpha * x @ op(dequant(w)) + beta * out` with `w` a 2-D 4-bit matrix, never materialising a
 * 16-bit copy of it: a few rows of x (decoding) in one pass over w that decodes each block in registers,
 * more rows through tiles dequantized into a workspace allocated for the call (counted under
 * "workspace"). Double-quantized constants are read as they are.
 *
 * @example
 * ```ts
 * import { matmul4bit, quantize, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using w = Tensor.randn([128, 64], { std: 0.02 });
 * using q = quantize(w);
 * using x = Tensor.randn([4, 64]);
 * using y = matmul4bit(x, q, { transW: true });
 * assert(y.shape[1] === 128);
 * ```
 */
export function matmul4bit(x: Tensor, w: QuantizedTensor, options: Matmul4bitOptions): Tensor {
  const what = "multiply by a 4-bit matrix";
  ensureGemmDtype(x, "x", what);
  if (w.shape.length !== 2) {
    throw new InvalidArgumentError(
      `Cannot ${what}: the 4-bit matrix must be 2-D, got [${w.shape.join(", ")}]`,
    );
  }
  if (x.shape.length !== 2) {
    throw new InvalidArgumentError(`Cannot ${what}: x must be 2-D, got [${x.shape.join(", ")}]`);
  }
  if (x.device !== w.device) {
    throw new InvalidArgumentError(`Cannot ${what}: x and W are on different devices`);
  }
  const [rows, cols] = w.shape;
  const [m, k] = x.shape;
  const n = options.transW ? rows : cols;
  const kw = options.transW ? cols : rows;
  if (k !== kw) {
    throw new InvalidArgumentError(
      `Cannot ${what}: x is ${m} x ${k} but op(W) is ${kw} x ${n} (W is ${rows} x ${cols}, transW ${options.transW})`,
    );
  }
  const dev = x.device;
  const lora = options.lora;
  if (lora) {
    const r = lora.a.shape[0];
    const shapes = [[lora.a, [r, k]], [lora.b, [n, r]], [lora.h, [m, r]]] as const;
    if (
      !options.transW ||
      shapes.some(([t, s]) => t.dtype !== x.dtype || t.shape.join() !== s.join() || t.device !== dev)
    ) {
      throw new InvalidArgumentError(
        `Cannot ${what}: a LoRA bypass (forward only) needs A [r, ${k}], B [${n}, r] and h [${m}, r] in ${x.dtype}`,
      );
    }
  }
  const bytes = ffi.gemm4bitWorkspace(dev, options.transW, m, n, k);
  const out = outputFor([m, n], options, x, what);
  return fillOrDispose(out, () => {
    using workspace = bytes > 0
      ? Tensor.empty([bytes], { dtype: "u8", category: "workspace", device: dev })
      : null;
    const bypass = lora
      ? { a: lora.a, b: lora.b, h: lora.h, rank: lora.a.shape[0], scaling: lora.scaling, dtype: x.dtype }
      : null;
    ffi.gemm4bit(
      dev,
      options.transW,
      m,
      n,
      k,
      options.alpha ?? 1,
      x,
      x.dtype,
      w.weight4(),
      bypass,
      options.beta ?? 0,
      out,
      out.dtype,
      workspace,
      bytes,
    );
  }, !options.out);
}

function sameElements(x: Tensor, y: Tensor, what: string): void {
  if (x.dtype !== y.dtype || x.numel !== y.numel || x.device !== y.device) {
    throw new InvalidArgumentError(
      `Cannot ${what}: x is ${x.dtype}[${x.numel}] and y is ${y.dtype}[${y.numel}]` +
        (x.device !== y.device ? " on another device" : ""),
    );
  }
  if (x.dtype !== "f32" && x.dtype !== "bf16" && x.dtype !== "f16") {
    throw new InvalidArgumentError(`Cannot ${what}: dtype must be f32, bf16 or f16, got ${x.dtype}`);
  }
}

/**
 * `y = alpha * x + beta * y` in place (beta = 0 ignores the old y).
 *
 * @example
 * ```ts
 * import { axpby, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using x = Tensor.from([1, 2]);
 * using y = Tensor.from([10, 20]);
 * axpby(2, x, 1, y);
 * assert(y.toFloat32()[1] === 24);
 * ```
 */
export function axpby(alpha: number, x: Tensor, beta: number, y: Tensor): void {
  sameElements(x, y, "compute alpha * x + beta * y");
  ffi.axpby(x.device, alpha, x, beta, y, x.dtype, x.numel);
}

/**
 * Inverted dropout with a counter-based mask: `y = keep ? x / (1 - p) : 0`. The mask depends only on
 * (seed, index), so the backward pass is the same call on the gradient with the same seed. `out` may be
 * `x` itself.
 *
 * @example
 * ```ts
 * import { dropout, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using x = Tensor.from([1, 1, 1, 1]);
 * using y = dropout(x, 0.5, 7);
 * assert(y.toFloat32().every((v) => v === 0 || v === 2));
 * ```
 */
export function dropout(
  x: Tensor,
  p: number,
  seed: number,
  out?: Tensor,
  category: Category = "activations",
): Tensor {
  if (!(p >= 0 && p < 1)) throw new InvalidArgumentError(`Cannot apply dropout: p = ${p} is not in [0, 1)`);
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new InvalidArgumentError(`Cannot apply dropout: seed ${seed} is not an integer >= 0`);
  }
  const y = out ?? Tensor.empty(x.shape, { dtype: x.dtype, category, device: x.device });
  return fillOrDispose(y, () => {
    sameElements(x, y, "apply dropout");
    ffi.dropout(x.device, x, y, x.dtype, x.numel, p, seed);
  }, !out);
}

/**
 * Fills a float tensor with uniform values in [low, high) from the counter-based generator.
 *
 * @example
 * ```ts
 * import { fillUniform, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using t = Tensor.empty([100]);
 * fillUniform(t, -1, 1, 3);
 * assert(t.toFloat32().every((v) => v >= -1 && v < 1));
 * ```
 */
export function fillUniform(t: Tensor, low: number, high: number, seed: number): void {
  if (!(low <= high) || !Number.isFinite(low) || !Number.isFinite(high)) {
    throw new InvalidArgumentError(
      `Cannot fill with uniform values: need finite low <= high, got [${low}, ${high})`,
    );
  }
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new InvalidArgumentError(`Cannot fill with uniform values: seed ${seed} is not an integer >= 0`);
  }
  if (t.dtype !== "f32" && t.dtype !== "bf16" && t.dtype !== "f16") {
    throw new InvalidArgumentError(`Cannot fill with uniform values: dtype must be f32, bf16 or f16`);
  }
  ffi.fillUniform(t.device, t, t.dtype, t.numel, low, high, seed);
}
