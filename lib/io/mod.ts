/**
 * Files: safetensors (read, write, headers), bitsandbytes 4-bit checkpoints, GGUF (read, write, its
 * quantized formats and tokenizer), and atomic writes.
 *
 * @module
 */

export * from "./atomic_file.ts";
export * from "./safetensors_header.ts";
export * from "./safetensors_reader.ts";
export * from "./safetensors_writer.ts";
export * from "./bnb4bit_file.ts";
export * from "./gguf_format.ts";
export * from "./gguf_quant.ts";
export * from "./gguf_reader.ts";
export * from "./gguf_writer.ts";
export * from "./gguf_tokenizer.ts";
