/**
 * The LLaMA model: its configurations, blocks, KV cache and generation, Hugging Face model directories,
 * weight files and GGUF export.
 *
 * @module
 */

export * from "./llama_config.ts";
export * from "./kv_cache.ts";
export * from "./model.ts";
export * from "./generation.ts";
export * from "./sampling.ts";
export * from "./model_dir.ts";
export * from "./weights_file.ts";
export * from "./gguf.ts";
