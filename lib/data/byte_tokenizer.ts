/**
 * A byte-level tokenizer: UTF-8 bytes as token ids, with optional BOS/EOS ids past them; the
 * tokenizer of the tiny model, and the options every tokenizer's `encode` takes.
 *
 * @module
 */

import { InvalidArgumentError } from "../base/mod.ts";
import type { EncodeOptions, Tokenizer } from "./tokenizer.ts";

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

const encoder = new TextEncoder();

/**
 * Byte-level tokenizer: ids 0..255 are the UTF-8 bytes of the text, then three specials, PAD = 256,
 * BOS = 257, EOS = 258, so any text encodes with no unknown token. `vocabSize` is 259, or that rounded
 * up to `padVocabTo`; ids from 259 to `vocabSize - 1` are padding rows that decode to nothing.
 *
 * @example
 * ```ts
 * import { ByteTokenizer } from "./byte_tokenizer.ts";
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
