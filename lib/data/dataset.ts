/**
 * A dataset of token streams for next-token training: a deterministic train/validation split of a text
 * or of documents, random training batches and a sequential pass over validation windows.
 *
 * @module
 */

import { ByteTokenizer } from "./byte_tokenizer.ts";
import type { CorpusDocument } from "./corpus.ts";
import { InvalidArgumentError, Xorshift128 } from "../base/mod.ts";
import { type Batch, type BatchOptions, BatchSampler, checkPositive } from "./sampler.ts";
import type { Tokenizer } from "./tokenizer.ts";

/** Options of {@linkcode TextDataset.fromText} and {@linkcode TextDataset.fromDocuments}. */
export interface TextDatasetOptions {
  /**
   * Tokenizer: any {@linkcode Tokenizer}, such as `HFTokenizer` for a real model (default: a new
   * {@linkcode ByteTokenizer} with no vocabulary padding).
   */
  tokenizer?: Tokenizer;
  /** Share of the text (fromText) or of the documents (fromDocuments) held out, in [0, 1); default 0.1. */
  validationFraction?: number;
  /** Seed of the document shuffle that picks validation documents (fromDocuments only); default 0. */
  seed?: number;
}

/** Which documents went where, for a dataset made by {@linkcode TextDataset.fromDocuments}. */
export interface DocumentSplit {
  /** Indices (into the documents given) of the training documents, ascending. */
  train: number[];
  /** Indices of the validation documents, ascending. */
  validation: number[];
}

/**
 * Token streams for training and validation, each an `Int32Array` of ids, with a seeded sampler of random
 * training windows ({@linkcode TextDataset.batches}) and a sequential pass over non-overlapping validation
 * windows ({@linkcode TextDataset.validationBatches}).
 *
 * Each part is framed as a whole: `fromText` gives `[BOS, text..., EOS]` per part; `fromDocuments` gives
 * `[BOS, doc..., EOS]` for every document, concatenated, so a window can cross a document boundary the way
 * it does in GPT-style pretraining and the model learns that EOS ends a document. (No BOS with a
 * tokenizer that has none.)
 *
 * @example
 * ```ts
 * import { TextDataset } from "./dataset.ts";
 * import { assert } from "@std/assert";
 * const docs = ["first document.", "second one.", "third.", "fourth and last."];
 * const data = TextDataset.fromDocuments(docs, { validationFraction: 0.25, seed: 7 });
 * assert(data.split!.validation.length === 1 && data.split!.train.length === 3);
 * const b = data.batches({ batchSize: 2, seqLen: 8, seed: 0 }).sample();
 * assert(b.inputs.length === 16 && b.inputs[1] === b.targets[0]);
 * let windows = 0;
 * for (const v of data.validationBatches({ batchSize: 4, seqLen: 4 })) windows += v.batchSize;
 * assert(windows === data.validationWindows(4));
 * ```
 */
export class TextDataset {
  /** The tokenizer the streams were made with. */
  readonly tokenizer: Tokenizer;
  /** Training tokens. */
  readonly train: Int32Array;
  /** Validation tokens. */
  readonly validation: Int32Array;
  /** For datasets split by document: which documents are in which part. */
  readonly split?: DocumentSplit;

  /** Wraps two token streams; most code calls `fromText` or `fromDocuments` instead. */
  constructor(train: Int32Array, validation: Int32Array, tokenizer: Tokenizer, split?: DocumentSplit) {
    this.train = train;
    this.validation = validation;
    this.tokenizer = tokenizer;
    this.split = split;
  }

  /**
   * Splits `text` by position: the last `validationFraction` of it (cut at the start of a line where one is
   * near, so no word is split) is validation, the rest training.
   */
  static fromText(text: string, options: TextDatasetOptions = {}): TextDataset {
    const tokenizer = options.tokenizer ?? new ByteTokenizer();
    const f = validationFraction(options);
    let cut = text.length - Math.round(text.length * f);
    if (cut < text.length) {
      const nl = text.lastIndexOf("\n", cut);
      if (nl >= 0 && cut - nl <= 1000) cut = nl + 1;
      else if (cut > 0 && (text.charCodeAt(cut - 1) & 0xfc00) === 0xd800) cut--; // keep surrogate pairs whole
    }
    const frame = (s: string) =>
      s.length === 0
        ? new Int32Array(0)
        : tokenizer.encode(s, { bos: tokenizer.bos !== undefined, eos: true });
    return new TextDataset(frame(text.slice(0, cut)), frame(text.slice(cut)), tokenizer);
  }

  /**
   * Splits documents: a shuffle seeded by `seed` picks `round(validationFraction * n)` of them (at least
   * one when the fraction is above 0 and there are two or more) for validation. Both parts keep the
   * documents' original order. Accepts strings or {@linkcode CorpusDocument}s.
   */
  static fromDocuments(
    documents: readonly (string | CorpusDocument)[],
    options: TextDatasetOptions = {},
  ): TextDataset {
    const tokenizer = options.tokenizer ?? new ByteTokenizer();
    const f = validationFraction(options);
    const n = documents.length;
    let nVal = Math.round(f * n);
    if (f > 0 && n >= 2) nVal = Math.max(nVal, 1);
    nVal = Math.min(nVal, Math.max(n - 1, 0));
    const order = new Xorshift128(options.seed ?? 0).shuffle([...Array(n).keys()]);
    const validation = order.slice(0, nVal).sort((a, b) => a - b);
    const train = order.slice(nVal).sort((a, b) => a - b);
    const stream = (indices: number[]) => {
      const parts = indices.map((i) => {
        const d = documents[i];
        return tokenizer.encode(typeof d === "string" ? d : d.text, {
          bos: tokenizer.bos !== undefined,
          eos: true,
        });
      });
      const out = new Int32Array(parts.reduce((s, p) => s + p.length, 0));
      let at = 0;
      for (const p of parts) {
        out.set(p, at);
        at += p.length;
      }
      return out;
    };
    return new TextDataset(stream(train), stream(validation), tokenizer, { train, validation });
  }

  /**
   * A sampler of training batches: each row is a window of `seqLen + 1` consecutive tokens starting at a
   * uniformly random position, split into inputs (first `seqLen`) and targets (last `seqLen`). The same
   * seed gives the same sequence of batches.
   */
  batches(options: BatchOptions): BatchSampler {
    return new BatchSampler(this.train, options);
  }

  /** Number of non-overlapping validation windows of `seqLen` (each needs one more token for its target). */
  validationWindows(seqLen: number): number {
    checkPositive("seqLen", seqLen);
    return Math.max(0, Math.floor((this.validation.length - 1) / seqLen));
  }

  /**
   * Every validation window once, in order: window `w` has inputs `validation[w*seqLen, (w+1)*seqLen)` and
   * targets one token further. Windows are grouped `batchSize` to a batch; the last batch can be smaller.
   */
  *validationBatches(options: BatchOptions): Generator<Batch> {
    const { batchSize, seqLen } = options;
    checkPositive("batchSize", batchSize);
    const windows = this.validationWindows(seqLen);
    for (let w0 = 0; w0 < windows; w0 += batchSize) {
      const rows = Math.min(batchSize, windows - w0);
      const inputs = new Int32Array(rows * seqLen);
      const targets = new Int32Array(rows * seqLen);
      for (let r = 0; r < rows; r++) {
        const start = (w0 + r) * seqLen;
        inputs.set(this.validation.subarray(start, start + seqLen), r * seqLen);
        targets.set(this.validation.subarray(start + 1, start + 1 + seqLen), r * seqLen);
      }
      yield { inputs, targets, batchSize: rows, seqLen };
    }
  }

  /** One line: token counts of both parts. */
  toString(): string {
    const docs = this.split ? `, ${this.split.train.length} + ${this.split.validation.length} documents` : "";
    return `TextDataset(train ${this.train.length} tokens, validation ${this.validation.length} tokens${docs}, ` +
      `vocab ${this.tokenizer.vocabSize})`;
  }
}

function validationFraction(options: TextDatasetOptions): number {
  const f = options.validationFraction ?? 0.1;
  if (!(f >= 0 && f < 1)) {
    throw new InvalidArgumentError(`Cannot split dataset: validationFraction must be in [0, 1), got ${f}`);
  }
  return f;
}
