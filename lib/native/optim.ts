/**
 * Typed wrappers of the optimizer functions of `qlora.h`: the fused AdamW and 8-bit AdamW steps (their
 * segment descriptors are encoded here, in the layouts `abi.ts` generates), the unsigned dynamic map
 * and the sum of squares for clipping by global norm.
 *
 * @module
 */

import { ADAMW8_SEGMENT, ADAMW_SEGMENT, DTYPE } from "./abi.ts";
import { call, code, type DeviceBuffer, type DTypeName, type Native, pointerBits, u64 } from "./call.ts";

/** One `qlora_adamw_segment`: `n` values of a parameter, its gradient and its f32 states. */
export interface AdamwSegment {
  /** Parameter values (f32 or bf16). */
  param: DeviceBuffer;
  /** Gradient values (f32 or bf16). */
  grad: DeviceBuffer;
  /** First moment, f32. */
  m: DeviceBuffer;
  /** Second moment, f32. */
  v: DeviceBuffer;
  /** f32 master weights of a bf16 parameter, or null to update the parameter directly. */
  master: DeviceBuffer | null;
  /** Values in the segment. */
  n: number;
  /** dtype of the parameter. */
  paramDtype: DTypeName;
  /** dtype of the gradient. */
  gradDtype: DTypeName;
}

/** One `qlora_adamw8_segment`: like {@linkcode AdamwSegment} with 8-bit codes and block absmax for m and v. */
export interface Adamw8Segment {
  /** Parameter values (f32 or bf16). */
  param: DeviceBuffer;
  /** Gradient values (f32 or bf16). */
  grad: DeviceBuffer;
  /** u8 codes of m (signed dynamic map). */
  mCodes: DeviceBuffer;
  /** u8 codes of v (unsigned dynamic map). */
  vCodes: DeviceBuffer;
  /** f32 absmax of m per block of `ADAMW8_BLOCK`. */
  mAbsmax: DeviceBuffer;
  /** f32 absmax of v per block. */
  vAbsmax: DeviceBuffer;
  /** f32 master weights of a bf16 parameter, or null. */
  master: DeviceBuffer | null;
  /** Values in the segment. */
  n: number;
  /** dtype of the parameter. */
  paramDtype: DTypeName;
  /** dtype of the gradient. */
  gradDtype: DTypeName;
}

/** Hyperparameters of one step, as `qlora_adamw_step` takes them. */
export interface AdamwHyper {
  /** Learning rate. */
  lr: number;
  /** Decay of the first moment. */
  beta1: number;
  /** Decay of the second moment. */
  beta2: number;
  /** Added to the denominator. */
  eps: number;
  /** Decoupled weight decay. */
  weightDecay: number;
  /** 1 - beta1^step. */
  biasCorrection1: number;
  /** 1 - beta2^step. */
  biasCorrection2: number;
  /** Factor of the gradients (clipping by global norm; 1 = none). */
  gradScale: number;
}

function encodeAdamw(segments: readonly AdamwSegment[]): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(segments.length * ADAMW_SEGMENT.size);
  const view = new DataView(bytes.buffer), at = ADAMW_SEGMENT.offsets;
  segments.forEach((s, i) => {
    const o = i * ADAMW_SEGMENT.size;
    view.setBigUint64(o + at.param, pointerBits(s.param), true);
    view.setBigUint64(o + at.grad, pointerBits(s.grad), true);
    view.setBigUint64(o + at.m, pointerBits(s.m), true);
    view.setBigUint64(o + at.v, pointerBits(s.v), true);
    view.setBigUint64(o + at.master, pointerBits(s.master), true);
    view.setBigUint64(o + at.n, u64(s.n), true);
    view.setInt32(o + at.param_dtype, code(DTYPE, s.paramDtype), true);
    view.setInt32(o + at.grad_dtype, code(DTYPE, s.gradDtype), true);
  });
  return bytes;
}

function encodeAdamw8(segments: readonly Adamw8Segment[]): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(segments.length * ADAMW8_SEGMENT.size);
  const view = new DataView(bytes.buffer), at = ADAMW8_SEGMENT.offsets;
  segments.forEach((s, i) => {
    const o = i * ADAMW8_SEGMENT.size;
    view.setBigUint64(o + at.param, pointerBits(s.param), true);
    view.setBigUint64(o + at.grad, pointerBits(s.grad), true);
    view.setBigUint64(o + at.m_codes, pointerBits(s.mCodes), true);
    view.setBigUint64(o + at.v_codes, pointerBits(s.vCodes), true);
    view.setBigUint64(o + at.m_absmax, pointerBits(s.mAbsmax), true);
    view.setBigUint64(o + at.v_absmax, pointerBits(s.vAbsmax), true);
    view.setBigUint64(o + at.master, pointerBits(s.master), true);
    view.setBigUint64(o + at.n, u64(s.n), true);
    view.setInt32(o + at.param_dtype, code(DTYPE, s.paramDtype), true);
    view.setInt32(o + at.grad_dtype, code(DTYPE, s.gradDtype), true);
  });
  return bytes;
}

/**
 * `qlora_adamw_step`: one fused AdamW step over every segment.
 *
 * @example
 * ```ts
 * import { adamwStep } from "./optim.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using p = Tensor.from([1]), g = Tensor.from([1]), m = Tensor.zeros([1]), v = Tensor.zeros([1]);
 * const segment = { param: p, grad: g, m, v, master: null, n: 1, paramDtype: "f32", gradDtype: "f32" } as const;
 * adamwStep(getDevice(), [segment], {
 *   lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0,
 *   biasCorrection1: 0.1, biasCorrection2: 0.001, gradScale: 1,
 * });
 * assert(Math.abs(p.toFloat32()[0] - 0.9) < 1e-5); // the first step moves by lr
 * ```
 */
export function adamwStep(on: Native, segments: readonly AdamwSegment[], h: AdamwHyper): void {
  call(
    on,
    () =>
      on.native.symbols.qlora_adamw_step(
        encodeAdamw(segments),
        u64(segments.length),
        h.lr,
        h.beta1,
        h.beta2,
        h.eps,
        h.weightDecay,
        h.biasCorrection1,
        h.biasCorrection2,
        h.gradScale,
      ),
  );
}

/**
 * `qlora_adamw8_step`: one fused 8-bit AdamW step over every segment.
 *
 * @example
 * ```ts
 * import { adamw8Step } from "./optim.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using p = Tensor.from([1]), g = Tensor.from([1]);
 * using mCodes = Tensor.zeros([1], { dtype: "u8" }), vCodes = Tensor.zeros([1], { dtype: "u8" });
 * using mAbsmax = Tensor.zeros([1]), vAbsmax = Tensor.zeros([1]);
 * const segment = {
 *   param: p, grad: g, mCodes, vCodes, mAbsmax, vAbsmax, master: null, n: 1, paramDtype: "f32", gradDtype: "f32",
 * } as const;
 * adamw8Step(getDevice(), [segment], {
 *   lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0,
 *   biasCorrection1: 0.1, biasCorrection2: 0.001, gradScale: 1,
 * });
 * assert(Math.abs(p.toFloat32()[0] - 0.9) < 1e-3);
 * ```
 */
export function adamw8Step(on: Native, segments: readonly Adamw8Segment[], h: AdamwHyper): void {
  call(
    on,
    () =>
      on.native.symbols.qlora_adamw8_step(
        encodeAdamw8(segments),
        u64(segments.length),
        h.lr,
        h.beta1,
        h.beta2,
        h.eps,
        h.weightDecay,
        h.biasCorrection1,
        h.biasCorrection2,
        h.gradScale,
      ),
  );
}

/**
 * `qlora_dynamic_map_unsigned`: the 256 sorted values of the unsigned 8-bit dynamic map (in [0, 1]).
 *
 * @example
 * ```ts
 * import { dynamicMapUnsigned } from "./optim.ts";
 * import { getDevice } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const map = dynamicMapUnsigned(getDevice("cpu"));
 * assert(map[0] === 0 && map[255] === 1);
 * ```
 */
export function dynamicMapUnsigned(on: Native): Float32Array<ArrayBuffer> {
  const out = new Float32Array(256);
  call(on, () => on.native.symbols.qlora_dynamic_map_unsigned(out));
  return out;
}

/**
 * `qlora_sum_squares`: the sum of x² over `n` values, in double.
 *
 * @example
 * ```ts
 * import { sumSquares } from "./optim.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using x = Tensor.from([3, 4]);
 * assert(sumSquares(getDevice(), x, "f32", 2) === 25);
 * ```
 */
export function sumSquares(on: Native, x: DeviceBuffer, dtype: DTypeName, n: number): number {
  const out = new Float64Array(1);
  call(on, () => on.native.symbols.qlora_sum_squares(x.ptr, code(DTYPE, dtype), u64(n), out));
  return out[0];
}
