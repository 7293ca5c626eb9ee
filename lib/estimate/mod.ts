/**
 * Estimates beside the ledger: the memory of a training step and of generation, and will it fit a GPU.
 *
 * @module
 */

export * from "./estimate.ts";
export * from "./estimate_inference.ts";
export * from "./fit.ts";
