/**
 * The tokenizer of a Hugging Face model directory as GGUF metadata, so that llama.cpp tokenizes and
 * detokenizes as `HFTokenizer` does: a `tokenizer.json` of the LLaMA / Mistral kind (BPE with byte
 * fallback, SentencePiece's `▁` for spaces) becomes llama.cpp's `llama` tokenizer model (`tokenizer.ggml.*`).
 *
 * llama.cpp's `llama` model tokenizes as SentencePiece does: starting from characters, it merges the
 * adjacent pair whose merged token has the highest score, until no pair is a token; characters that are
 * not tokens become their UTF-8 bytes' `<0xXX>` tokens. BPE instead applies `merges` in rank order. With
 * each merged token's score the negated rank of the first merge that makes it, the two agree (where a
 * token is made by one merge, as in vocabularies converted from SentencePiece). llama.cpp's own converter
 * gives every token of such a `tokenizer.json` the score -1000, and then merges the leftmost pair first,
 * which differs (`"w  hello"` with the tiny test tokenizer).
 *
 * Token types: `<0xXX>` BYTE, the `unk_token` UNKNOWN, other special added tokens CONTROL, other added
 * tokens USER_DEFINED, the rest NORMAL. Ids without a token (gaps, and rows of a vocabulary padded past
 * the tokenizer: `config.json`'s `vocab_size`) get `[PAD<id>]`, UNUSED, score -1000, as the converter
 * writes them. Special ids and `add_bos_token`/`add_eos_token` come from `HFTokenizer`'s conventions.
 *
 * Byte fallback differs where a byte has no `<0xXX>` token: transformers gives `<unk>`, llama.cpp throws
 * (an uncaught C++ exception: the process aborts), also on text its host tokenizes by itself
 * (node-llama-cpp tokenizes "some test text here" when it loads a model). LLaMA's and Mistral's
 * vocabularies have all 256; a tokenizer that lacks some is refused unless `allowMissingByteTokens`.
 *
 * @module
 */

import { InvalidArgumentError } from "../base/mod.ts";
import { ggufArray, type GGUFMetadata, ggufValue } from "./gguf_format.ts";
import { HFTokenizer, type HFTokenizerFiles } from "../data/mod.ts";

/** llama.cpp's token types (`tokenizer.ggml.token_type`). */
export const GGUF_TOKEN_TYPES = {
  NORMAL: 1,
  UNKNOWN: 2,
  CONTROL: 3,
  USER_DEFINED: 4,
  UNUSED: 5,
  BYTE: 6,
} as const;

type Json = Record<string, unknown>;

/** Whether the normalizer or the pre-tokenizer puts `▁` before the text (SentencePiece's dummy prefix). */
function addsSpacePrefix(tj: Json): boolean {
  const parts = (n: unknown): Json[] => {
    if (!n || typeof n !== "object") return [];
    const j = n as Json;
    return Array.isArray(j.normalizers)
      ? j.normalizers.flatMap(parts)
      : Array.isArray(j.pretokenizers)
      ? j.pretokenizers.flatMap(parts)
      : [j];
  };
  for (const p of [...parts(tj.normalizer), ...parts(tj.pre_tokenizer)]) {
    if (p.type === "Prepend" && p.prepend === "▁") return true;
    if (p.type === "Metaspace") {
      return p.prepend_scheme ? p.prepend_scheme !== "never" : p.add_prefix_space !== false;
    }
  }
  return false;
}

/** Options of {@linkcode ggufTokenizerFromFiles} and {@linkcode ggufTokenizerMetadata}. */
export interface GGUFTokenizerOptions {
  /** Rows of the model's embedding, to pad the token list to (default: config.json's `vocab_size`, else the tokenizer's size). */
  vocabSize?: number;
  /** Write a tokenizer that lacks some of the 256 `<0xXX>` tokens (llama.cpp aborts on text with such a byte). */
  allowMissingByteTokens?: boolean;
}

/**
 * The `tokenizer.ggml.*` metadata of a tokenizer given as parsed files (see `HFTokenizerFiles`), its
 * token list padded to `vocabSize`.
 *
 * @throws {InvalidArgumentError} for a tokenizer that is not BPE with byte fallback, that lacks byte
 * tokens (unless allowed), or that is larger than `vocabSize`; `TokenizerFileError` for files
 * `HFTokenizer` cannot use.
 *
 * @example
 * ```ts
 * import { ggufTokenizerFromFiles } from "./gguf_tokenizer.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 * const tokenizer = {
 *   added_tokens: [{ id: 0, content: "<unk>", special: true }, { id: 1, content: "</s>", special: true }],
 *   normalizer: { type: "Replace", pattern: { String: " " }, content: "▁" },
 *   model: { type: "BPE", byte_fallback: true, unk_token: "<unk>",
 *     vocab: { "<unk>": 0, "</s>": 1, "<0x0A>": 2, "▁": 3, "a": 4, "▁a": 5 }, merges: ["▁ a"] },
 * };
 * const files = { tokenizer, tokenizerConfig: { eos_token: "</s>" } };
 * assertThrows(() => ggufTokenizerFromFiles(files), Error, "255 of the 256 byte tokens");
 * const m = ggufTokenizerFromFiles(files, { vocabSize: 8, allowMissingByteTokens: true });
 * assertEquals(m.get("tokenizer.ggml.tokens")?.type, "array");
 * const tokens = m.get("tokenizer.ggml.tokens"), types = m.get("tokenizer.ggml.token_type");
 * assertEquals(tokens?.type === "array" && tokens.values.at(-1), "[PAD7]");
 * assertEquals(types?.type === "array" && [...types.values], [2, 3, 6, 1, 1, 1, 5, 5]);
 * ```
 */
export function ggufTokenizerFromFiles(
  files: HFTokenizerFiles,
  options: GGUFTokenizerOptions = {},
): GGUFMetadata {
  const tok = HFTokenizer.fromFiles(files);
  const where = files.source ? `${files.source.replace(/\/*$/, "/")}tokenizer.json` : "tokenizer.json";
  const fail = (why: string) => new InvalidArgumentError(`Cannot export the tokenizer of ${where}: ${why}`);
  const tj = files.tokenizer as Json;
  const model = tj.model as Json;
  if (model.type !== "BPE" || model.byte_fallback !== true) {
    throw fail(
      `only BPE with byte_fallback (LLaMA/Mistral's SentencePiece kind) is supported, got ${model.type}` +
        (model.type === "BPE" ? " without byte_fallback (a byte-level BPE, as Llama 3's)" : ""),
    );
  }
  const vocab = model.vocab as Record<string, number>;
  const missing = Array.from(
    { length: 256 },
    (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`,
  )
    .filter((t) => !(t in vocab));
  if (missing.length && !options.allowMissingByteTokens) {
    throw fail(
      `${missing.length} of the 256 byte tokens (${
        missing.slice(0, 3).join(", ")
      }...) are missing: llama.cpp ` +
        "aborts on text with a byte it has no token for (transformers gives <unk>)",
    );
  }
  const n = options.vocabSize ?? tok.vocabSize;
  if (tok.size > n) throw fail(`it has ${tok.size} ids, more than the model's ${n} rows`);
  const tokens: string[] = new Array(n).fill(undefined);
  const types: number[] = new Array(n).fill(GGUF_TOKEN_TYPES.UNUSED);
  for (const [text, id] of Object.entries(vocab)) {
    tokens[id] = text;
    types[id] = /^<0x[0-9A-Fa-f]{2}>$/.test(text) ? GGUF_TOKEN_TYPES.BYTE : GGUF_TOKEN_TYPES.NORMAL;
  }
  for (const a of (tj.added_tokens ?? []) as Json[]) {
    const id = a.id as number;
    tokens[id] = a.content as string;
    types[id] = a.special ? GGUF_TOKEN_TYPES.CONTROL : GGUF_TOKEN_TYPES.USER_DEFINED;
  }
  if (tok.unk !== undefined) types[tok.unk] = GGUF_TOKEN_TYPES.UNKNOWN;
  const merges = (model.merges ?? []) as (string | [string, string])[];
  const rank = new Map<string, number>();
  merges.forEach((m, r) => {
    const [a, b] = typeof m === "string" ? m.split(" ") : m;
    if (!rank.has(a + b)) rank.set(a + b, r);
  });
  const scores = tokens.map((t, id) => {
    if (t === undefined || types[id] !== GGUF_TOKEN_TYPES.NORMAL) return -1000;
    return 0 - (rank.get(t) ?? merges.length);
  });
  tokens.forEach((t, id) => tokens[id] = t ?? `[PAD${id}]`);
  const u32 = (v: number) => ggufValue("u32", v);
  const m: GGUFMetadata = new Map([
    ["tokenizer.ggml.model", ggufValue("string", "llama")],
    ["tokenizer.ggml.pre", ggufValue("string", "default")],
    ["tokenizer.ggml.tokens", ggufArray("string", tokens)],
    ["tokenizer.ggml.scores", ggufArray("f32", scores)],
    ["tokenizer.ggml.token_type", ggufArray("i32", types)],
  ]);
  if (tok.bos !== undefined) m.set("tokenizer.ggml.bos_token_id", u32(tok.bos));
  m.set("tokenizer.ggml.eos_token_id", u32(tok.eos));
  if (tok.unk !== undefined) m.set("tokenizer.ggml.unknown_token_id", u32(tok.unk));
  if (tok.pad !== undefined) m.set("tokenizer.ggml.padding_token_id", u32(tok.pad));
  m.set("tokenizer.ggml.add_bos_token", ggufValue("bool", tok.addBos));
  m.set("tokenizer.ggml.add_eos_token", ggufValue("bool", tok.addEos));
  m.set("tokenizer.ggml.add_space_prefix", ggufValue("bool", addsSpacePrefix(tj)));
  if (tok.chatTemplate !== undefined) m.set("tokenizer.chat_template", ggufValue("string", tok.chatTemplate));
  return m;
}

/**
 * {@linkcode ggufTokenizerFromFiles} for a model directory: its `tokenizer.json` and, where present,
 * `tokenizer_config.json` and `config.json` (whose `vocab_size` pads the token list unless `vocabSize` is
 * given).
 *
 * @example
 * ```ts
 * import { ggufTokenizerMetadata } from "./gguf_tokenizer.ts";
 * import { assertEquals } from "@std/assert";
 * const dir = new URL("../../tests/data/tokenizer/tiny", import.meta.url).pathname;
 * const m = await ggufTokenizerMetadata(dir, { allowMissingByteTokens: true }); // it has 3 of the 256
 * const tokens = m.get("tokenizer.ggml.tokens");
 * assertEquals(tokens?.type === "array" && tokens.values.length, 64); // config.json's vocab_size
 * assertEquals(m.get("tokenizer.ggml.bos_token_id"), { type: "u32", value: 1 });
 * ```
 */
export async function ggufTokenizerMetadata(
  dir: string,
  options: GGUFTokenizerOptions = {},
): Promise<GGUFMetadata> {
  const read = async (name: string, required: boolean) => {
    try {
      return JSON.parse(await Deno.readTextFile(`${dir}/${name}`));
    } catch (e) {
      if (!required && e instanceof Deno.errors.NotFound) return undefined;
      throw new InvalidArgumentError(
        `Cannot export the tokenizer of ${dir}: ${name}: ${(e as Error).message}`,
        {
          cause: e,
        },
      );
    }
  };
  return ggufTokenizerFromFiles({
    tokenizer: await read("tokenizer.json", true),
    tokenizerConfig: await read("tokenizer_config.json", false),
    config: await read("config.json", false),
    source: dir,
  }, options);
}
