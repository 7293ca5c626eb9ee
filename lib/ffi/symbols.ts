/**
 * The `Deno.dlopen` symbol table of `cuda/include/qlora.h`, one entry per C function in header order.
 * `tests/ffi_test.ts` parses the header and checks every entry against it, so the two cannot drift.
 *
 * Device pointers are `pointer`; host outputs of fixed size are `buffer`; sizes are `u64`.
 *
 * @module
 */

/**
 * The native symbols, typed for `Deno.dlopen`.
 *
 * @example
 * ```ts
 * import { symbols } from "./symbols.ts";
 * import { assert } from "@std/assert";
 * assert(symbols.qlora_abi_version.result === "u32");
 * ```
 */
export const symbols = {
  // library
  qlora_abi_version: { parameters: [], result: "u32" },
  qlora_backend_name: { parameters: [], result: "pointer" },
  qlora_last_error: { parameters: [], result: "pointer" },
  qlora_init: { parameters: [], result: "i32" },
  qlora_device_name: { parameters: ["buffer", "u64"], result: "i32" },
  qlora_synchronize: { parameters: [], result: "i32" },
  // memory and the ledger
  qlora_malloc: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  qlora_free: { parameters: ["pointer"], result: "i32" },
  qlora_memcpy: { parameters: ["pointer", "pointer", "u64", "i32"], result: "i32" },
  qlora_memset: { parameters: ["pointer", "i32", "u64"], result: "i32" },
  qlora_memory_stats: { parameters: ["buffer"], result: "i32" },
  qlora_reset_peak: { parameters: [], result: "i32" },
  qlora_set_memory_budget: { parameters: ["u64"], result: "i32" },
  qlora_host_malloc: { parameters: ["buffer", "u64"], result: "i32" },
  qlora_host_free: { parameters: ["pointer"], result: "i32" },
  // elementwise
  qlora_cast: { parameters: ["pointer", "i32", "pointer", "i32", "u64"], result: "i32" },
  qlora_fill_normal: { parameters: ["pointer", "i32", "u64", "f32", "f32", "u64"], result: "i32" },
  // 4-bit blockwise quantization
  qlora_quant_map: { parameters: ["i32", "buffer"], result: "i32" },
  qlora_quantize_4bit: {
    parameters: ["pointer", "i32", "u64", "i32", "u64", "pointer", "pointer"],
    result: "i32",
  },
  qlora_dequantize_4bit: {
    parameters: ["pointer", "pointer", "u64", "i32", "u64", "pointer", "i32"],
    result: "i32",
  },
  // double quantization of the constants
  qlora_dynamic_map: { parameters: ["buffer"], result: "i32" },
  qlora_double_quantize: {
    parameters: ["pointer", "u64", "u64", "pointer", "pointer", "buffer"],
    result: "i32",
  },
  qlora_double_dequantize: {
    parameters: ["pointer", "pointer", "f32", "u64", "u64", "pointer"],
    result: "i32",
  },
  // elementwise, for layers
  qlora_axpby: { parameters: ["f32", "pointer", "f32", "pointer", "i32", "u64"], result: "i32" },
  qlora_dropout: { parameters: ["pointer", "pointer", "i32", "u64", "f32", "u64"], result: "i32" },
  qlora_fill_uniform: { parameters: ["pointer", "i32", "u64", "f32", "f32", "u64"], result: "i32" },
  // GEMM
  qlora_gemm: {
    parameters: [
      "i32",
      "i32",
      "u64",
      "u64",
      "u64",
      "f32",
      "pointer",
      "pointer",
      "i32",
      "f32",
      "pointer",
      "i32",
      "u64",
      "u64",
      "u64",
      "u64",
    ],
    result: "i32",
  },
  qlora_gemm_4bit_workspace: { parameters: ["i32", "u64", "u64", "u64", "buffer"], result: "i32" },
  qlora_gemm_4bit: {
    parameters: [
      "i32",
      "u64",
      "u64",
      "u64",
      "f32",
      "pointer",
      "i32",
      "pointer",
      "pointer",
      "i32",
      "u64",
      "f32",
      "pointer",
      "i32",
      "pointer",
      "u64",
    ],
    result: "i32",
  },
  // optimizers
  qlora_adamw_step: {
    parameters: ["buffer", "u64", "f32", "f32", "f32", "f32", "f32", "f32", "f32", "f32"],
    result: "i32",
  },
  qlora_adamw8_step: {
    parameters: ["buffer", "u64", "f32", "f32", "f32", "f32", "f32", "f32", "f32", "f32"],
    result: "i32",
  },
  qlora_dynamic_map_unsigned: { parameters: ["buffer"], result: "i32" },
  qlora_sum_squares: { parameters: ["pointer", "i32", "u64", "buffer"], result: "i32" },
  // the ops of a LLaMA-style model
  qlora_embedding_forward: {
    parameters: ["pointer", "u64", "pointer", "u64", "u64", "pointer", "i32"],
    result: "i32",
  },
  qlora_embedding_backward: {
    parameters: ["pointer", "u64", "pointer", "u64", "u64", "pointer", "i32"],
    result: "i32",
  },
  qlora_rmsnorm_forward: {
    parameters: ["pointer", "pointer", "u64", "u64", "f32", "pointer", "pointer", "i32"],
    result: "i32",
  },
  qlora_rmsnorm_backward: {
    parameters: ["pointer", "pointer", "pointer", "pointer", "u64", "u64", "pointer", "pointer", "i32"],
    result: "i32",
  },
  qlora_rope: { parameters: ["pointer", "u64", "u64", "u64", "u64", "f32", "i32", "i32"], result: "i32" },
  qlora_attention_forward: {
    parameters: [
      "pointer",
      "pointer",
      "pointer",
      "u64",
      "u64",
      "u64",
      "u64",
      "u64",
      "pointer",
      "pointer",
      "i32",
    ],
    result: "i32",
  },
  qlora_attention_backward: {
    parameters: [
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "u64",
      "u64",
      "u64",
      "u64",
      "u64",
      "pointer",
      "pointer",
      "pointer",
      "i32",
    ],
    result: "i32",
  },
  qlora_swiglu_forward: { parameters: ["pointer", "pointer", "u64", "pointer", "i32"], result: "i32" },
  qlora_swiglu_backward: {
    parameters: ["pointer", "pointer", "pointer", "u64", "pointer", "pointer", "i32"],
    result: "i32",
  },
  qlora_cross_entropy: {
    parameters: ["pointer", "pointer", "u64", "u64", "pointer", "pointer", "f32", "i32"],
    result: "i32",
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** The loaded library's symbols. */
export type QloraSymbols = Deno.DynamicLibrary<typeof symbols>["symbols"];

/** `qlora_status` values of the header. */
export const Status = {
  OK: 0,
  INVALID_ARGUMENT: 1,
  OUT_OF_MEMORY: 2,
  NON_FINITE: 3,
  NO_DEVICE: 4,
  UNSUPPORTED: 5,
  INTERNAL: 6,
} as const;

/** The ABI version this TypeScript layer was written for (`QLORA_ABI_VERSION`). */
export const ABI_VERSION = 5;
