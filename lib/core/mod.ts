/**
 * Devices and their memory ledger, dtypes, tensors (and tensors parked in the host pool), 4-bit
 * quantization and the matrix products: what every layer above is made of.
 *
 * @module
 */

export * from "./dtype.ts";
export * from "./memory.ts";
export * from "./device.ts";
export * from "./tensor.ts";
export * from "./host_tensor.ts";
export * from "./quant.ts";
export * from "./ops.ts";
