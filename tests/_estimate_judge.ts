/**
 * How the estimates are judged against the ledger (tests/estimate_test.ts, tests/estimate_inference_test.ts):
 * the relative error, and the kernels' scratch the estimate does not model, which the ledger counts on top.
 *
 * @module
 */

import { getDevice } from "../mod.ts";

/** The relative error of an estimate (0 when both are 0). */
export function error(measured: number, estimated: number): number {
  return measured === 0 ? (estimated === 0 ? 0 : Infinity) : Math.abs(estimated - measured) / measured;
}

/**
 * Scratch the estimate does not model and the ledger counts on top of the workspace. CPU: oneDNN's
 * scratchpads inside a GEMM (oneDNN sizes them itself), at most 512 KiB per thread (measured on 2
 * threads: up to 524,416 bytes beside a 7B QLoRA dequantization tile, 296,320 for one bf16 product).
 * CUDA: 64 KiB for the optimizers' descriptor tables and 8-bit maps and CUB's sort storage (measured:
 * 2,240 bytes for the tiny model's AdamW step). Under QLORA_CPU_ISA=avx2 oneDNN has no bf16 product: a
 * refused product runs on f32 copies of its operands, at most 16 MiB (kF32RouteMaxBytes in
 * cuda/src/cpu/gemm.cpp) beside its scratchpad.
 */
export const UNMODELLED_SCRATCH = getDevice().backend === "cpu"
  ? navigator.hardwareConcurrency * 512 * 1024 +
    (String(getDevice()).includes("AVX2 only") ? 16 * 2 ** 20 : 0)
  : 64 * 1024;

/** {@linkcode error} for a figure that may exceed its estimate by oneDNN's scratchpads, never fall short. */
export function workspaceError(measured: number, estimated: number): number {
  return measured > estimated && measured <= estimated + UNMODELLED_SCRATCH ? 0 : error(measured, estimated);
}
