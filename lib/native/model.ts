/**
 * Typed wrappers of the ops of a LLaMA-style model in `qlora.h`, forward and backward side by side.
 * Activations are `[rows, dim]` in f32 or bf16 (`dtype`); backward functions overwrite input gradients
 * and add into weight gradients (null: a frozen weight).
 *
 * @module
 */

import { DTYPE } from "./abi.ts";
import { address, call, code, type DeviceBuffer, type DTypeName, type Native, u64 } from "./call.ts";

/** Sizes of attention: `q` is `[batch, seq, heads, headDim]`, k and v `[batch, seq, kvHeads, headDim]`. */
export interface AttentionDims {
  /** Sequences. */
  batch: number;
  /** Tokens per sequence. */
  seq: number;
  /** Query heads. */
  heads: number;
  /** Key and value heads (heads is a multiple of it). */
  kvHeads: number;
  /** Features per head. */
  headDim: number;
}

/**
 * `qlora_embedding_forward`: `out[r] = table[tokens[r]]` for `rows` i32 tokens, table `[vocab, dim]`.
 *
 * @example
 * ```ts
 * import { embeddingForward } from "./model.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * using table = Tensor.from([0, 1, 10, 11], { shape: [2, 2] });
 * using tokens = Tensor.from(new Int32Array([1]));
 * using out = Tensor.empty([1, 2]);
 * embeddingForward(getDevice(), tokens, 1, table, 2, 2, out, "f32");
 * assertEquals([...out.toFloat32()], [10, 11]);
 * ```
 */
export function embeddingForward(
  on: Native,
  tokens: DeviceBuffer,
  rows: number,
  table: DeviceBuffer,
  vocab: number,
  dim: number,
  out: DeviceBuffer,
  dtype: DTypeName,
): void {
  call(
    on,
    () =>
      on.native.symbols.qlora_embedding_forward(
        tokens.ptr,
        u64(rows),
        table.ptr,
        u64(vocab),
        u64(dim),
        out.ptr,
        code(DTYPE, dtype),
      ),
  );
}

/**
 * `qlora_embedding_backward`: `dtable[tokens[r]] += dout[r]`.
 *
 * @example
 * ```ts
 * import { embeddingBackward } from "./model.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * using tokens = Tensor.from(new Int32Array([1]));
 * using dout = Tensor.from([5, 6], { shape: [1, 2] });
 * using dtable = Tensor.zeros([2, 2]);
 * embeddingBackward(getDevice(), tokens, 1, dout, 2, 2, dtable, "f32");
 * assertEquals([...dtable.toFloat32()], [0, 0, 5, 6]);
 * ```
 */
export function embeddingBackward(
  on: Native,
  tokens: DeviceBuffer,
  rows: number,
  dout: DeviceBuffer,
  vocab: number,
  dim: number,
  dtable: DeviceBuffer,
  dtype: DTypeName,
): void {
  call(
    on,
    () =>
      on.native.symbols.qlora_embedding_backward(
        tokens.ptr,
        u64(rows),
        dout.ptr,
        u64(vocab),
        u64(dim),
        dtable.ptr,
        code(DTYPE, dtype),
      ),
  );
}

/**
 * `qlora_rmsnorm_forward`: `out = x * rstd * weight`, `rstd[r] = 1 / sqrt(mean(x[r]²) + eps)` (f32).
 *
 * @example
 * ```ts
 * import { rmsnormForward } from "./model.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using x = Tensor.from([3, 4], { shape: [1, 2] });
 * using w = Tensor.from([1, 1]);
 * using out = Tensor.empty([1, 2]), rstd = Tensor.empty([1]);
 * rmsnormForward(getDevice(), x, w, 1, 2, 1e-6, out, rstd, "f32");
 * assert(Math.abs(rstd.toFloat32()[0] - 1 / Math.sqrt(12.5 + 1e-6)) < 1e-6);
 * ```
 */
export function rmsnormForward(
  on: Native,
  x: DeviceBuffer,
  weight: DeviceBuffer,
  rows: number,
  dim: number,
  eps: number,
  out: DeviceBuffer,
  rstd: DeviceBuffer,
  dtype: DTypeName,
): void {
  call(
    on,
    () =>
      on.native.symbols.qlora_rmsnorm_forward(
        x.ptr,
        weight.ptr,
        u64(rows),
        u64(dim),
        eps,
        out.ptr,
        rstd.ptr,
        code(DTYPE, dtype),
      ),
  );
}

/**
 * `qlora_rmsnorm_backward`: dx from dout; `dweight += sum over rows of dout * x * rstd` (null: frozen).
 *
 * @example
 * ```ts
 * import { rmsnormBackward } from "./model.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using x = Tensor.from([3, 4], { shape: [1, 2] });
 * using w = Tensor.from([1, 1]);
 * using rstd = Tensor.from([1 / Math.sqrt(12.5)]);
 * using dout = Tensor.from([1, 0], { shape: [1, 2] });
 * using dx = Tensor.empty([1, 2]);
 * rmsnormBackward(getDevice(), dout, x, w, rstd, 1, 2, dx, null, "f32");
 * const [a, b] = dx.toFloat32();
 * assert(Math.abs(3 * a + 4 * b) < 1e-5); // dx is orthogonal to x
 * ```
 */
export function rmsnormBackward(
  on: Native,
  dout: DeviceBuffer,
  x: DeviceBuffer,
  weight: DeviceBuffer,
  rstd: DeviceBuffer,
  rows: number,
  dim: number,
  dx: DeviceBuffer,
  dweight: DeviceBuffer | null,
  dtype: DTypeName,
): void {
  call(
    on,
    () =>
      on.native.symbols.qlora_rmsnorm_backward(
        dout.ptr,
        x.ptr,
        weight.ptr,
        rstd.ptr,
        u64(rows),
        u64(dim),
        dx.ptr,
        address(dweight),
        code(DTYPE, dtype),
      ),
  );
}

/**
 * `qlora_rope`: rotary position embedding in place on x `[batch, seq, heads, headDim]`; `inverse` turns
 * back (the backward pass).
 *
 * @example
 * ```ts
 * import { rope } from "./model.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * using x = Tensor.from([1, 2, 3, 4], { shape: [1, 4] });
 * rope(getDevice(), x, 1, 1, 1, 4, 10000, false, "f32"); // position 0 turns by 0
 * assertEquals([...x.toFloat32()], [1, 2, 3, 4]);
 * ```
 */
export function rope(
  on: Native,
  x: DeviceBuffer,
  batch: number,
  seq: number,
  heads: number,
  headDim: number,
  theta: number,
  inverse: boolean,
  dtype: DTypeName,
): void {
  call(
    on,
    () =>
      on.native.symbols.qlora_rope(
        x.ptr,
        u64(batch),
        u64(seq),
        u64(heads),
        u64(headDim),
        theta,
        inverse ? 1 : 0,
        code(DTYPE, dtype),
      ),
  );
}

/**
 * `qlora_attention_forward`: causal grouped-query attention; `lse` (f32 `[batch, heads, seq]`) keeps
 * each row's log-sum-exp for the backward pass.
 *
 * @example
 * ```ts
 * import { attentionForward } from "./model.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * using q = Tensor.from([1, 0]), k = Tensor.from([1, 0]), v = Tensor.from([5, 6]);
 * using out = Tensor.empty([2]), lse = Tensor.empty([1]);
 * const dims = { batch: 1, seq: 1, heads: 1, kvHeads: 1, headDim: 2 };
 * attentionForward(getDevice(), q, k, v, dims, out, lse, "f32");
 * assertEquals([...out.toFloat32()], [5, 6]); // one token attends to itself only
 * ```
 */
export function attentionForward(
  on: Native,
  q: DeviceBuffer,
  k: DeviceBuffer,
  v: DeviceBuffer,
  dims: AttentionDims,
  out: DeviceBuffer,
  lse: DeviceBuffer,
  dtype: DTypeName,
): void {
  call(
    on,
    () =>
      on.native.symbols.qlora_attention_forward(
        q.ptr,
        k.ptr,
        v.ptr,
        u64(dims.batch),
        u64(dims.seq),
        u64(dims.heads),
        u64(dims.kvHeads),
        u64(dims.headDim),
        out.ptr,
        lse.ptr,
        code(DTYPE, dtype),
      ),
  );
}

/**
 * `qlora_attention_backward`: dq, dk, dv (overwritten) from dout, the inputs, and `out` and `lse` of
 * the forward pass.
 *
 * @example
 * ```ts
 * import { attentionBackward, attentionForward } from "./model.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * using q = Tensor.from([1, 0]), k = Tensor.from([1, 0]), v = Tensor.from([5, 6]);
 * using out = Tensor.empty([2]), lse = Tensor.empty([1]);
 * const dims = { batch: 1, seq: 1, heads: 1, kvHeads: 1, headDim: 2 };
 * attentionForward(getDevice(), q, k, v, dims, out, lse, "f32");
 * using dout = Tensor.from([1, 2]), dq = Tensor.empty([2]), dk = Tensor.empty([2]), dv = Tensor.empty([2]);
 * attentionBackward(getDevice(), dout, q, k, v, out, lse, dims, dq, dk, dv, "f32");
 * assertEquals([...dv.toFloat32()], [1, 2]); // a single key: dv is dout
 * ```
 */
export function attentionBackward(
  on: Native,
  dout: DeviceBuffer,
  q: DeviceBuffer,
  k: DeviceBuffer,
  v: DeviceBuffer,
  out: DeviceBuffer,
  lse: DeviceBuffer,
  dims: AttentionDims,
  dq: DeviceBuffer,
  dk: DeviceBuffer,
  dv: DeviceBuffer,
  dtype: DTypeName,
): void {
  call(
    on,
    () =>
      on.native.symbols.qlora_attention_backward(
        dout.ptr,
        q.ptr,
        k.ptr,
        v.ptr,
        out.ptr,
        lse.ptr,
        u64(dims.batch),
        u64(dims.seq),
        u64(dims.heads),
        u64(dims.kvHeads),
        u64(dims.headDim),
        dq.ptr,
        dk.ptr,
        dv.ptr,
        code(DTYPE, dtype),
      ),
  );
}

/**
 * `qlora_swiglu_forward`: `out = silu(gate) * up` over `n` values.
 *
 * @example
 * ```ts
 * import { swigluForward } from "./model.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using g = Tensor.from([0]), u = Tensor.from([5]), out = Tensor.empty([1]);
 * swigluForward(getDevice(), g, u, 1, out, "f32");
 * assert(out.toFloat32()[0] === 0);
 * ```
 */
export function swigluForward(
  on: Native,
  gate: DeviceBuffer,
  up: DeviceBuffer,
  n: number,
  out: DeviceBuffer,
  dtype: DTypeName,
): void {
  call(
    on,
    () => on.native.symbols.qlora_swiglu_forward(gate.ptr, up.ptr, u64(n), out.ptr, code(DTYPE, dtype)),
  );
}

/**
 * `qlora_swiglu_backward`: dgate and dup (overwritten) from dout.
 *
 * @example
 * ```ts
 * import { swigluBackward } from "./model.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using g = Tensor.from([0]), u = Tensor.from([4]), dout = Tensor.from([1]);
 * using dgate = Tensor.empty([1]), dup = Tensor.empty([1]);
 * swigluBackward(getDevice(), dout, g, u, 1, dgate, dup, "f32");
 * assert(Math.abs(dgate.toFloat32()[0] - 2) < 1e-6); // silu'(0) * up = 0.5 * 4
 * ```
 */
export function swigluBackward(
  on: Native,
  dout: DeviceBuffer,
  gate: DeviceBuffer,
  up: DeviceBuffer,
  n: number,
  dgate: DeviceBuffer,
  dup: DeviceBuffer,
  dtype: DTypeName,
): void {
  call(
    on,
    () =>
      on.native.symbols.qlora_swiglu_backward(
        dout.ptr,
        gate.ptr,
        up.ptr,
        u64(n),
        dgate.ptr,
        dup.ptr,
        code(DTYPE, dtype),
      ),
  );
}

/**
 * `qlora_cross_entropy`: per-row softmax cross-entropy into `losses` (f32; 0 on rows whose target is
 * -1); with `dlogits` (may be the logits), `(softmax - onehot) * gradScale`.
 *
 * @example
 * ```ts
 * import { crossEntropy } from "./model.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using logits = Tensor.from([0, 0], { shape: [1, 2] });
 * using targets = Tensor.from(new Int32Array([1]));
 * using losses = Tensor.empty([1]);
 * crossEntropy(getDevice(), logits, targets, 1, 2, losses, null, 1, "f32");
 * assert(Math.abs(losses.toFloat32()[0] - Math.LN2) < 1e-6);
 * ```
 */
export function crossEntropy(
  on: Native,
  logits: DeviceBuffer,
  targets: DeviceBuffer,
  rows: number,
  vocab: number,
  losses: DeviceBuffer,
  dlogits: DeviceBuffer | null,
  gradScale: number,
  dtype: DTypeName,
): void {
  call(
    on,
    () =>
      on.native.symbols.qlora_cross_entropy(
        logits.ptr,
        targets.ptr,
        u64(rows),
        u64(vocab),
        losses.ptr,
        address(dlogits),
        gradScale,
        code(DTYPE, dtype),
      ),
  );
}

/**
 * `qlora_rope_at`: RoPE in place on x `[rows, heads, headDim]`, row r turned to `positions[r]` (i32 on the
 * device).
 *
 * @example
 * ```ts
 * import { ropeAt } from "./model.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using x = Tensor.from([1, 0], { shape: [1, 2] });
 * using positions = Tensor.from(new Int32Array([1]));
 * ropeAt(getDevice(), x, 1, 1, 2, positions, 10000, false, "f32"); // head_dim 2: one pair, 1 radian
 * assert(Math.abs(x.toFloat32()[0] - Math.cos(1)) < 1e-6);
 * ```
 */
export function ropeAt(
  on: Native,
  x: DeviceBuffer,
  rows: number,
  heads: number,
  headDim: number,
  positions: DeviceBuffer,
  theta: number,
  inverse: boolean,
  dtype: DTypeName,
): void {
  call(
    on,
    () =>
      on.native.symbols.qlora_rope_at(
        x.ptr,
        u64(rows),
        u64(heads),
        u64(headDim),
        positions.ptr,
        theta,
        inverse ? 1 : 0,
        code(DTYPE, dtype),
      ),
  );
}

/** Where a step of generation sits in a key/value cache of `capacity` rows per sequence. */
export interface CacheDims {
  /** Sequences. */
  batch: number;
  /** New tokens per sequence in this step. */
  tokens: number;
  /** Rows per sequence of the cache. */
  capacity: number;
  /** Cache row of the first new token (the tokens already cached). */
  past: number;
}

/**
 * `qlora_kv_cache_append`: k and v `[batch, tokens, kvDim]` into rows `past ..` of each sequence of the
 * caches `[batch, capacity, kvDim]`.
 *
 * @example
 * ```ts
 * import { kvCacheAppend } from "./model.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * using k = Tensor.from([1, 2]), v = Tensor.from([3, 4]);
 * using kc = Tensor.zeros([3, 2]), vc = Tensor.zeros([3, 2]);
 * kvCacheAppend(getDevice(), k, v, { batch: 1, tokens: 1, capacity: 3, past: 1 }, 2, kc, vc, "f32");
 * assertEquals([...kc.toFloat32()], [0, 0, 1, 2, 0, 0]);
 * ```
 */
export function kvCacheAppend(
  on: Native,
  k: DeviceBuffer,
  v: DeviceBuffer,
  dims: CacheDims,
  kvDim: number,
  kCache: DeviceBuffer,
  vCache: DeviceBuffer,
  dtype: DTypeName,
): void {
  call(
    on,
    () =>
      on.native.symbols.qlora_kv_cache_append(
        k.ptr,
        v.ptr,
        u64(dims.batch),
        u64(dims.tokens),
        u64(kvDim),
        kCache.ptr,
        vCache.ptr,
        u64(dims.capacity),
        u64(dims.past),
        code(DTYPE, dtype),
      ),
  );
}

/**
 * `qlora_attention_cached`: q `[batch, tokens, heads, headDim]` (the queries at cache rows `past ..`)
 * attends each sequence's cached keys from `firstKey[b]` (i32 on the device; null: 0) to its own row.
 *
 * @example
 * ```ts
 * import { attentionCached } from "./model.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * using q = Tensor.from([1, 0]), kc = Tensor.from([1, 0, 0, 0]), vc = Tensor.from([5, 6, 7, 8]);
 * using out = Tensor.empty([2]);
 * const dims = { batch: 1, tokens: 1, capacity: 2, past: 0, heads: 1, kvHeads: 1, headDim: 2 };
 * attentionCached(getDevice(), q, kc, vc, dims, null, out, "f32");
 * assertEquals([...out.toFloat32()], [5, 6]); // the first token sees its own key only
 * ```
 */
export function attentionCached(
  on: Native,
  q: DeviceBuffer,
  kCache: DeviceBuffer,
  vCache: DeviceBuffer,
  dims: CacheDims & Omit<AttentionDims, "batch" | "seq">,
  firstKey: DeviceBuffer | null,
  out: DeviceBuffer,
  dtype: DTypeName,
): void {
  call(
    on,
    () =>
      on.native.symbols.qlora_attention_cached(
        q.ptr,
        kCache.ptr,
        vCache.ptr,
        u64(dims.batch),
        u64(dims.tokens),
        u64(dims.past),
        u64(dims.capacity),
        u64(dims.heads),
        u64(dims.kvHeads),
        u64(dims.headDim),
        address(firstKey),
        out.ptr,
        code(DTYPE, dtype),
      ),
  );
}
