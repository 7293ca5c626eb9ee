/**
 * The ops of a LLaMA-style model, forward and backward side by side (llm.c style), as thin typed wrappers
 * of the native functions. Activations are 2-D `[rows, dim]` tensors with rows = batch * seq, f32 or
 * bf16. Backward functions return (or overwrite) input gradients and ADD into weight gradients.
 *
 * @module
 */

import { InvalidArgumentError } from "../base/mod.ts";
import * as ffi from "../native/mod.ts";
import { type Category, Tensor } from "../core/mod.ts";

type Act = "f32" | "bf16";

function actDtype(t: Tensor, what: string): Act {
  if (t.dtype !== "f32" && t.dtype !== "bf16") {
    throw new InvalidArgumentError(`Cannot ${what}: activations must be f32 or bf16, got ${t.dtype}`);
  }
  return t.dtype;
}

function same(a: Tensor, b: Tensor, what: string, names: string): void {
  if (a.dtype !== b.dtype || a.numel !== b.numel || a.device !== b.device) {
    throw new InvalidArgumentError(
      `Cannot ${what}: ${names} must match (${a.dtype}[${a.shape.join(", ")}] vs ${b.dtype}[${
        b.shape.join(", ")
      }])`,
    );
  }
}

const like = (t: Tensor, category: Category = "activations") => () =>
  Tensor.empty(t.shape, { dtype: t.dtype, category, device: t.device });

/**
 * `out[r] = table[tokens[r]]`: tokens is an i32 tensor of `rows` ids, table `[vocab, dim]`.
 *
 * @example
 * ```ts
 * import { embeddingForward, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using table = Tensor.from([0, 1, 10, 11], { shape: [2, 2] });
 * using tokens = Tensor.from(new Int32Array([1, 0]));
 * using out = embeddingForward(tokens, table);
 * assert(out.toFloat32()[0] === 10);
 * ```
 */
export function embeddingForward(tokens: Tensor, table: Tensor): Tensor {
  const what = "look up embeddings";
  if (tokens.dtype !== "i32") throw new InvalidArgumentError(`Cannot ${what}: tokens must be i32`);
  if (table.shape.length !== 2) throw new InvalidArgumentError(`Cannot ${what}: the table must be 2-D`);
  const dtype = actDtype(table, what);
  const [vocab, dim] = table.shape;
  const [out] = ffi.withOutputs(
    [() => Tensor.empty([tokens.numel, dim], { dtype, device: table.device })],
    (out) => ffi.embeddingForward(table.device, tokens, tokens.numel, table, vocab, dim, out, dtype),
  );
  return out;
}

/**
 * `dtable[tokens[r]] += dout[r]`.
 *
 * @example
 * ```ts
 * import { embeddingBackward, Tensor } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * using tokens = Tensor.from(new Int32Array([1, 1, 0]));
 * using dout = Tensor.from([1, 2, 3, 4, 5, 6], { shape: [3, 2] });
 * using dtable = Tensor.zeros([2, 2]);
 * embeddingBackward(tokens, dout, dtable);
 * assertEquals([...dtable.toFloat32()], [5, 6, 4, 6]); // row 1 gets rows 0 and 1 of dout
 * ```
 */
export function embeddingBackward(tokens: Tensor, dout: Tensor, dtable: Tensor): void {
  const what = "back-propagate embeddings";
  const dtype = actDtype(dtable, what);
  const [vocab, dim] = dtable.shape;
  if (dout.dtype !== dtype || dout.numel !== tokens.numel * dim) {
    throw new InvalidArgumentError(`Cannot ${what}: dout must be ${dtype}[${tokens.numel}, ${dim}]`);
  }
  ffi.embeddingBackward(dtable.device, tokens, tokens.numel, dout, vocab, dim, dtable, dtype);
}

/** Output of {@linkcode rmsnormForward}: the normalised rows and the saved 1/rms per row. */
export interface RmsnormResult {
  /** Normalised and scaled rows. */
  out: Tensor;
  /** f32 [rows]: 1 / sqrt(mean(x²) + eps), kept for backward. */
  rstd: Tensor;
}

/**
 * RMSNorm: `out = x / rms(x) * weight` per row of x `[rows, dim]`.
 *
 * @example
 * ```ts
 * import { rmsnormForward, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using x = Tensor.from([3, 4], { shape: [1, 2] });
 * using w = Tensor.from([1, 1]);
 * const { out, rstd } = rmsnormForward(x, w, 1e-6);
 * assert(Math.abs(out.toFloat32()[1] - 4 / Math.sqrt(12.5)) < 1e-4);
 * out.dispose();
 * rstd.dispose();
 * ```
 */
export function rmsnormForward(x: Tensor, weight: Tensor, eps = 1e-5): RmsnormResult {
  const what = "normalise";
  const dtype = actDtype(x, what);
  const [rows, dim] = x.shape;
  if (x.shape.length !== 2 || weight.numel !== dim || weight.dtype !== dtype) {
    throw new InvalidArgumentError(`Cannot ${what}: x must be [rows, ${weight.numel}] and weight ${dtype}`);
  }
  const [out, rstd] = ffi.withOutputs(
    [like(x), () => Tensor.empty([rows], { category: "activations", device: x.device })],
    (out, rstd) => ffi.rmsnormForward(x.device, x, weight, rows, dim, eps, out, rstd, dtype),
  );
  return { out, rstd };
}

/**
 * dx of RMSNorm (a new tensor); adds the weight gradient into `dweight` unless it is null (frozen).
 *
 * @example
 * ```ts
 * import { rmsnormBackward, rmsnormForward, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using x = Tensor.from([3, 4], { shape: [1, 2] });
 * using w = Tensor.from([1, 1]);
 * const fwd = rmsnormForward(x, w, 1e-6);
 * using out = fwd.out, rstd = fwd.rstd;
 * using dout = Tensor.from([1, 0], { shape: [1, 2] });
 * using dweight = Tensor.zeros([2]);
 * using dx = rmsnormBackward(dout, x, w, rstd, dweight);
 * const [a, b] = dx.toFloat32();
 * assert(Math.abs(3 * a + 4 * b) < 1e-5); // scaling x leaves the output unchanged: dx is orthogonal to x
 * assert(Math.abs(dweight.toFloat32()[0] - out.toFloat32()[0]) < 1e-6); // dweight = dout * x / rms
 * ```
 */
export function rmsnormBackward(
  dout: Tensor,
  x: Tensor,
  weight: Tensor,
  rstd: Tensor,
  dweight: Tensor | null,
): Tensor {
  const what = "back-propagate a norm";
  same(dout, x, what, "dout and x");
  const [rows, dim] = x.shape;
  const [dx] = ffi.withOutputs(
    [like(x)],
    (dx) => ffi.rmsnormBackward(x.device, dout, x, weight, rstd, rows, dim, dx, dweight, x.dtype),
  );
  return dx;
}

/** Shape of attention inputs: x is `[batch * seq, heads * headDim]`. */
export interface HeadShape {
  /** Sequences in the batch. */
  batch: number;
  /** Tokens per sequence. */
  seq: number;
  /** Heads of this tensor (query heads, or key/value heads). */
  heads: number;
  /** Features per head (even). */
  headDim: number;
}

/**
 * Rotary position embedding in place (`inverse` turns back: the backward pass).
 *
 * @example
 * ```ts
 * import { rope, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using q = Tensor.randn([4, 8]);
 * const before = q.toFloat32();
 * rope(q, { batch: 1, seq: 4, heads: 2, headDim: 4 }, 10000, false);
 * rope(q, { batch: 1, seq: 4, heads: 2, headDim: 4 }, 10000, true);
 * assert(Math.abs(q.toFloat32()[7] - before[7]) < 1e-5);
 * ```
 */
export function rope(x: Tensor, s: HeadShape, theta: number, inverse: boolean): void {
  const dtype = actDtype(x, "rotate");
  if (x.numel !== s.batch * s.seq * s.heads * s.headDim) {
    throw new InvalidArgumentError(`Cannot rotate: ${x.numel} values is not ${JSON.stringify(s)}`);
  }
  ffi.rope(x.device, x, s.batch, s.seq, s.heads, s.headDim, theta, inverse, dtype);
}

/** Output of {@linkcode attentionForward}. */
export interface AttentionResult {
  /** Attention output, like q. */
  out: Tensor;
  /** f32 [batch, heads, seq] log-sum-exp of each row, kept for backward. */
  lse: Tensor;
}

/**
 * Causal (grouped-query) attention. q `[batch*seq, heads*headDim]`, k and v `[batch*seq, kvHeads*headDim]`.
 *
 * @example
 * ```ts
 * import { attentionForward, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const s = { batch: 1, seq: 2, heads: 1, kvHeads: 1, headDim: 2 };
 * using q = Tensor.randn([2, 2], { seed: 1 });
 * using k = Tensor.randn([2, 2], { seed: 2 });
 * using v = Tensor.from([1, 2, 3, 4], { shape: [2, 2] });
 * const fwd = attentionForward(q, k, v, s);
 * using out = fwd.out, lse = fwd.lse;
 * const o = out.toFloat32();
 * assert(Math.abs(o[0] - 1) < 1e-6 && Math.abs(o[1] - 2) < 1e-6); // causal: token 0 sees only itself
 * assert(o[2] > 1 && o[2] < 3 && Math.abs(o[3] - o[2] - 1) < 1e-5); // token 1 mixes both values
 * assert(lse.numel === 2);
 * ```
 */
export function attentionForward(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  s: HeadShape & { kvHeads: number },
): AttentionResult {
  const what = "attend";
  const dtype = actDtype(q, what);
  same(k, v, what, "k and v");
  if (
    q.numel !== s.batch * s.seq * s.heads * s.headDim || k.numel !== s.batch * s.seq * s.kvHeads * s.headDim
  ) {
    throw new InvalidArgumentError(`Cannot ${what}: q, k, v do not match ${JSON.stringify(s)}`);
  }
  const [out, lse] = ffi.withOutputs(
    [like(q), () => Tensor.empty([s.batch * s.heads * s.seq], { category: "activations", device: q.device })],
    (out, lse) => ffi.attentionForward(q.device, q, k, v, s, out, lse, dtype),
  );
  return { out, lse };
}

/**
 * dq, dk, dv of attention (new tensors).
 *
 * @example
 * ```ts
 * import { attentionBackward, attentionForward, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const s = { batch: 1, seq: 2, heads: 1, kvHeads: 1, headDim: 2 };
 * using q = Tensor.randn([2, 2], { seed: 1 });
 * using k = Tensor.randn([2, 2], { seed: 2 });
 * using v = Tensor.randn([2, 2], { seed: 3 });
 * const fwd = attentionForward(q, k, v, s);
 * using out = fwd.out, lse = fwd.lse;
 * using dout = Tensor.from([1, 1, 1, 1], { shape: [2, 2] });
 * const g = attentionBackward(dout, q, k, v, { out, lse }, s);
 * using dq = g.dq, dk = g.dk, dv = g.dv;
 * const dvs = dv.toFloat32(), dqs = dq.toFloat32(), dks = dk.toFloat32();
 * assert(Math.abs(dvs[0] + dvs[2] - 2) < 1e-5); // attention weights sum to 1: dv sums to dout
 * assert(Math.abs(dqs[0]) < 1e-6 && Math.abs(dqs[1]) < 1e-6); // token 0 attends to one key only
 * assert(Math.abs(dks[0] + dks[2]) < 1e-5); // softmax ignores a shift of the scores: dk sums to 0
 * ```
 */
export function attentionBackward(
  dout: Tensor,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  fwd: AttentionResult,
  s: HeadShape & { kvHeads: number },
): { dq: Tensor; dk: Tensor; dv: Tensor } {
  same(dout, q, "back-propagate attention", "dout and q");
  const [dq, dk, dv] = ffi.withOutputs(
    [like(q), like(k), like(v)],
    (dq, dk, dv) => ffi.attentionBackward(q.device, dout, q, k, v, fwd.out, fwd.lse, s, dq, dk, dv, q.dtype),
  );
  return { dq, dk, dv };
}

/**
 * Rotary position embedding in place at explicit positions: row r of x `[rows, heads · headDim]` turns to
 * `positions[r]` (an i32 tensor of `rows` values, any integer). Generation's form of {@linkcode rope}: the
 * new tokens sit at positions after the cached ones, each sequence of a batch at its own.
 *
 * @example
 * ```ts
 * import { rope, ropeAt, Tensor } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * using a = Tensor.randn([3, 8], { seed: 1 });
 * using b = a.clone();
 * rope(a, { batch: 1, seq: 3, heads: 2, headDim: 4 }, 10000, false);
 * using positions = Tensor.from(new Int32Array([0, 1, 2]));
 * ropeAt(b, positions, 2, 4, 10000);
 * assertEquals([...b.toFloat32()], [...a.toFloat32()]); // the same angles, bit for bit
 * ```
 */
export function ropeAt(
  x: Tensor,
  positions: Tensor,
  heads: number,
  headDim: number,
  theta: number,
  inverse = false,
): void {
  const what = "rotate at positions";
  const dtype = actDtype(x, what);
  const rows = positions.numel;
  if (positions.dtype !== "i32" || x.numel !== rows * heads * headDim || positions.device !== x.device) {
    throw new InvalidArgumentError(
      `Cannot ${what}: x must be [${rows}, ${heads * headDim}] for ${rows} i32 positions on its device`,
    );
  }
  ffi.ropeAt(x.device, x, rows, heads, headDim, positions, theta, inverse, dtype);
}

/** Where a step's queries sit in a key/value cache and what they attend (see {@linkcode attentionCached}). */
export interface CachedAttentionShape {
  /** Sequences. */
  batch: number;
  /** New tokens (queries) per sequence. */
  tokens: number;
  /** Cache row of the first new token. */
  past: number;
  /** Rows per sequence of the cache. */
  capacity: number;
  /** Query heads. */
  heads: number;
  /** Key/value heads. */
  kvHeads: number;
  /** Features per head. */
  headDim: number;
}

/**
 * Attention of new queries q `[batch · tokens, heads · headDim]` over a key/value cache
 * (`[batch, capacity, kvHeads · headDim]` each; the new tokens' keys already appended at rows `past ..`):
 * query t attends its sequence's keys `firstKey[b] .. past + t` (an i32 tensor, or null for 0). A query
 * with no key to attend (left padding) gets zeros. Returns the output, like q.
 *
 * @example
 * ```ts
 * import { attentionCached, Tensor } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * // One head of 2 features; two cached rows, the second query's.
 * using q = Tensor.from([0, 0]);
 * using keys = Tensor.from([1, 0, 0, 1]), values = Tensor.from([1, 2, 3, 4]);
 * const s = { batch: 1, tokens: 1, past: 1, capacity: 2, heads: 1, kvHeads: 1, headDim: 2 };
 * using out = attentionCached(q, keys, values, s, null);
 * assertEquals([...out.toFloat32()], [2, 3]); // equal scores: the mean of the two values
 * ```
 */
export function attentionCached(
  q: Tensor,
  keys: Tensor,
  values: Tensor,
  s: CachedAttentionShape,
  firstKey: Tensor | null,
): Tensor {
  const what = "attend over the cache";
  const dtype = actDtype(q, what);
  same(keys, values, what, "keys and values");
  if (
    q.numel !== s.batch * s.tokens * s.heads * s.headDim ||
    keys.numel !== s.batch * s.capacity * s.kvHeads * s.headDim || keys.dtype !== dtype
  ) {
    throw new InvalidArgumentError(`Cannot ${what}: q and the cache do not match ${JSON.stringify(s)}`);
  }
  if (firstKey && (firstKey.dtype !== "i32" || firstKey.numel !== s.batch)) {
    throw new InvalidArgumentError(`Cannot ${what}: firstKey must be i32[${s.batch}]`);
  }
  const [out] = ffi.withOutputs(
    [like(q)],
    (out) => ffi.attentionCached(q.device, q, keys, values, s, firstKey, out, dtype),
  );
  return out;
}

/**
 * SwiGLU: `silu(gate) * up`.
 *
 * @example
 * ```ts
 * import { swigluForward, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using g = Tensor.from([0]);
 * using u = Tensor.from([5]);
 * using out = swigluForward(g, u);
 * assert(out.toFloat32()[0] === 0);
 * ```
 */
export function swigluForward(gate: Tensor, up: Tensor): Tensor {
  const dtype = actDtype(gate, "apply SwiGLU");
  same(gate, up, "apply SwiGLU", "gate and up");
  const [out] = ffi.withOutputs(
    [like(gate)],
    (out) => ffi.swigluForward(gate.device, gate, up, gate.numel, out, dtype),
  );
  return out;
}

/**
 * dgate and dup of SwiGLU (new tensors).
 *
 * @example
 * ```ts
 * import { swigluBackward, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using g = Tensor.from([0]);
 * using u = Tensor.from([4]);
 * using dout = Tensor.from([1]);
 * const grads = swigluBackward(dout, g, u);
 * using dgate = grads.dgate, dup = grads.dup;
 * assert(dup.toFloat32()[0] === 0); // silu(0) = 0
 * assert(Math.abs(dgate.toFloat32()[0] - 2) < 1e-6); // silu'(0) * up = 0.5 * 4
 * ```
 */
export function swigluBackward(dout: Tensor, gate: Tensor, up: Tensor): { dgate: Tensor; dup: Tensor } {
  same(dout, gate, "back-propagate SwiGLU", "dout and gate");
  const [dgate, dup] = ffi.withOutputs(
    [like(gate), like(up)],
    (dgate, dup) => ffi.swigluBackward(gate.device, dout, gate, up, gate.numel, dgate, dup, gate.dtype),
  );
  return { dgate, dup };
}

/**
 * Softmax cross-entropy of logits `[rows, vocab]` against i32 targets (-1 = ignored). Returns the mean
 * loss over counted rows; with `backward`, writes `(softmax - onehot) / counted` over the logits in place.
 * A chunk of a longer batch passes the whole batch's count as `options.counted`: its gradient is then
 * scaled as the whole batch's, and its loss is its share of the whole batch's mean.
 *
 * @example
 * ```ts
 * import { crossEntropy, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using logits = Tensor.from([0, 0], { shape: [1, 2] });
 * using targets = Tensor.from(new Int32Array([1]));
 * assert(Math.abs(crossEntropy(logits, targets, false).loss - Math.LN2) < 1e-6);
 * ```
 */
export function crossEntropy(
  logits: Tensor,
  targets: Tensor,
  backward: boolean,
  options: { counted?: number } = {},
): { loss: number; counted: number } {
  const what = "compute the cross-entropy";
  const dtype = actDtype(logits, what);
  if (targets.dtype !== "i32" || logits.shape.length !== 2 || targets.numel !== logits.shape[0]) {
    throw new InvalidArgumentError(`Cannot ${what}: targets must be i32[${logits.shape[0]}]`);
  }
  const [rows, vocab] = logits.shape;
  const host = targets.toArray() as Int32Array;
  const own = host.reduce((c, t) => c + (t === -1 ? 0 : 1), 0);
  const counted = options.counted ?? own;
  if (!Number.isSafeInteger(counted) || counted < own) {
    throw new InvalidArgumentError(
      `Cannot ${what}: counted must be an integer >= the ${own} counted targets here, got ${counted}`,
    );
  }
  using losses = Tensor.empty([rows], { category: "workspace", device: logits.device });
  ffi.crossEntropy(
    logits.device,
    logits,
    targets,
    rows,
    vocab,
    losses,
    backward ? logits : null,
    counted ? 1 / counted : 0,
    dtype,
  );
  const l = losses.toFloat32();
  let sum = 0;
  for (const v of l) sum += v;
  return { loss: counted ? sum / counted : 0, counted };
}

/**
 * Sets a tensor to zero.
 *
 * @example
 * ```ts
 * import { Tensor, zero } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * using t = Tensor.from([1.5, -2, 3], { dtype: "bf16" });
 * zero(t);
 * assertEquals([...t.toFloat32()], [0, 0, 0]);
 * ```
 */
export function zero(t: Tensor): void {
  ffi.memset(t.device, t, 0, t.byteLength);
}
