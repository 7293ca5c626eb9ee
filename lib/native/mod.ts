/**
 * The native layer: one typed function per function of `cuda/include/qlora.h`, grouped by subject.
 * These are the only code that calls the `Deno.dlopen` symbols, builds pointers and `BigInt`
 * arguments, and turns status codes into the typed errors of `lib/base/errors.ts`; every other module of
 * `lib/` calls them. Each takes the device it runs on first (anything with the opened library).
 *
 * @example
 * ```ts
 * import * as ffi from "./mod.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using x = Tensor.from([3, 4]);
 * assert(ffi.sumSquares(getDevice(), x, "f32", 2) === 25);
 * ```
 *
 * @module
 */

export {
  abiVersion,
  type Backend,
  backendName,
  init,
  lastError,
  libraryPath,
  loadLibrary,
  type NativeLibrary,
  openLibrary,
} from "./library.ts";
export { ADAMW8_BLOCK, CATEGORY, DTYPE, LEDGER_SNAPSHOT, QUANT_TYPE } from "./abi.ts";
export { enumNames } from "./enums.ts";
export * from "./call.ts";
export * from "./outputs.ts";
export * from "./memory.ts";
export * from "./elementwise.ts";
export * from "./quant.ts";
export * from "./gemm.ts";
export * from "./optim.ts";
export * from "./model.ts";
