/**
 * Optimizers: AdamW, 8-bit AdamW and the paged AdamW whose states move to host memory under pressure.
 *
 * @module
 */

export * from "./optimizer.ts";
export * from "./adamw.ts";
export * from "./adamw8bit.ts";
export * from "./paged_adamw.ts";
