/**
 * Typed wrappers of the GEMM functions of `qlora.h`: batched row-major GEMM, and the product with a
 * 4-bit matrix with its workspace query.
 *
 * @module
 */

import { DTYPE, LORA4 } from "./abi.ts";
import {
  address,
  call,
  code,
  type DeviceBuffer,
  type DTypeName,
  type Native,
  pointerBits,
  u64,
} from "./call.ts";
import { encodeWeight4, type Weight4 } from "./quant.ts";

/**
 * `qlora_gemm`: for each of `batch` matrices, `C = alpha * op(A) @ op(B) + beta * C` with op(A)
 * m x k and op(B) k x n; strides are elements between the matrices of a batch (0: the same matrix).
 *
 * @example
 * ```ts
 * import { gemm } from "./gemm.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * using a = Tensor.from([1, 2, 3, 4], { shape: [2, 2] });
 * using b = Tensor.from([1, 0, 0, 1], { shape: [2, 2] });
 * using c = Tensor.empty([2, 2]);
 * gemm(getDevice(), false, false, 2, 2, 2, 1, a, b, "f32", 0, c, "f32", 1, 0, 0, 4);
 * assertEquals([...c.toFloat32()], [1, 2, 3, 4]);
 * ```
 */
export function gemm(
  on: Native,
  transA: boolean,
  transB: boolean,
  m: number,
  n: number,
  k: number,
  alpha: number,
  a: DeviceBuffer,
  b: DeviceBuffer,
  abDtype: DTypeName,
  beta: number,
  c: DeviceBuffer,
  cDtype: DTypeName,
  batch: number,
  strideA: number,
  strideB: number,
  strideC: number,
): void {
  call(
    on,
    () =>
      on.native.symbols.qlora_gemm(
        transA ? 1 : 0,
        transB ? 1 : 0,
        u64(m),
        u64(n),
        u64(k),
        alpha,
        a.ptr,
        b.ptr,
        code(DTYPE, abDtype),
        beta,
        c.ptr,
        code(DTYPE, cDtype),
        u64(batch),
        u64(strideA),
        u64(strideB),
        u64(strideC),
      ),
  );
}

/**
 * `qlora_gemm_4bit_workspace`: bytes of device workspace {@linkcode gemm4bit} needs for this shape.
 *
 * @example
 * ```ts
 * import { gemm4bitWorkspace } from "./gemm.ts";
 * import { getDevice } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * assert(gemm4bitWorkspace(getDevice(), true, 4, 128, 64) >= 0);
 * ```
 */
export function gemm4bitWorkspace(on: Native, transW: boolean, m: number, n: number, k: number): number {
  const bytes = new BigUint64Array(1);
  call(on, () => on.native.symbols.qlora_gemm_4bit_workspace(transW ? 1 : 0, u64(m), u64(n), u64(k), bytes));
  return Number(bytes[0]);
}

/** A LoRA bypass as `qlora_lora4` describes it: `C += scaling * (X Aᵀ) Bᵀ`, `h = X Aᵀ` written. */
export interface Lora4 {
  /** A, rank x k. */
  a: DeviceBuffer;
  /** B, n x rank. */
  b: DeviceBuffer;
  /** h, m x rank (overwritten). */
  h: DeviceBuffer;
  /** The rank. */
  rank: number;
  /** alpha / rank. */
  scaling: number;
  /** dtype of A, B and h (X's). */
  dtype: DTypeName;
}

function encodeLora4(l: Lora4): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(LORA4.size);
  const view = new DataView(bytes.buffer), at = LORA4.offsets;
  view.setBigUint64(at.a, pointerBits(l.a), true);
  view.setBigUint64(at.b, pointerBits(l.b), true);
  view.setBigUint64(at.h, pointerBits(l.h), true);
  view.setBigUint64(at.rank, u64(l.rank), true);
  view.setFloat32(at.scaling, l.scaling, true);
  view.setInt32(at.dtype, code(DTYPE, l.dtype), true);
  return bytes;
}

/**
 * `qlora_gemm_4bit`: `C = alpha * X @ op(dequant(W)) + beta * C`, X m x k, W stored n x k (`transW`) or
 * k x n; with `lora` (forward only) a LoRA layer's bypass in the same call; `workspace` of
 * {@linkcode gemm4bitWorkspace} bytes (null when it needs none).
 *
 * @example
 * ```ts
 * import { gemm4bit } from "./gemm.ts";
 * import { getDevice, quantize, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using w = Tensor.from(new Array(64 * 64).fill(0.5), { shape: [64, 64] });
 * using q = quantize(w, { doubleQuant: false });
 * using x = Tensor.from(new Array(64).fill(1), { shape: [1, 64] });
 * using c = Tensor.empty([1, 64]);
 * const weight = { packed: q.packed, absmax: q.absmax, nested: null, quantType: "nf4", blocksize: 64 } as const;
 * gemm4bit(getDevice(), true, 1, 64, 64, 1, x, "f32", weight, null, 0, c, "f32", null, 0);
 * assert(c.toFloat32().every((v) => v === 32));
 * ```
 */
export function gemm4bit(
  on: Native,
  transW: boolean,
  m: number,
  n: number,
  k: number,
  alpha: number,
  x: DeviceBuffer,
  xDtype: DTypeName,
  w: Weight4,
  lora: Lora4 | null,
  beta: number,
  c: DeviceBuffer,
  cDtype: DTypeName,
  workspace: DeviceBuffer | null,
  workspaceBytes: number,
): void {
  const desc = encodeWeight4(w), bypass = lora ? encodeLora4(lora) : null;
  call(
    on,
    () =>
      on.native.symbols.qlora_gemm_4bit(
        transW ? 1 : 0,
        u64(m),
        u64(n),
        u64(k),
        alpha,
        x.ptr,
        code(DTYPE, xDtype),
        desc,
        bypass,
        beta,
        c.ptr,
        code(DTYPE, cDtype),
        address(workspace),
        u64(workspaceBytes),
      ),
  );
}
