/**
 * Layers: the linear layer in full, LoRA and QLoRA form, and the LLaMA ops (embedding, RMSNorm, RoPE,
 * attention, SwiGLU, cross-entropy), each forward beside its backward.
 *
 * @module
 */

export * from "./lora.ts";
export * from "./model_ops.ts";
