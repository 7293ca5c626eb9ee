/**
 * Tokenizers behind one interface: the byte-level {@linkcode ByteTokenizer} of the tiny model
 * (`lib/data/data.ts`), and {@linkcode HFTokenizer}, which reads a Hugging Face model directory's
 * `tokenizer.json` through the npm package `@huggingface/tokenizers` (Hugging Face's own pure
 * JavaScript implementation of that format: BPE with byte fallback, SentencePiece's `▁` metaspace,
 * added special tokens, as LLaMA and Mistral use them).
 *
 * Conventions, from the model directory:
 * - BOS / EOS / PAD ids: `tokenizer_config.json`'s `bos_token` / `eos_token` / `pad_token` (looked up in
 *   the vocabulary; `null` there means none), else `config.json`'s `bos_token_id` / `eos_token_id` /
 *   `pad_token_id`. Every model needs an EOS (a completion must be able to end); BOS and PAD may be
 *   absent (`undefined`). Where `eos_token_id` lists several ids, all of them are in `stopIds`.
 * - Whether `encode` adds BOS / EOS by default: `add_bos_token` / `add_eos_token` (defaults: BOS where
 *   there is one, EOS not, as LLaMA's).
 * - `vocabSize`: `config.json`'s `vocab_size` (the embedding rows), else the tokenizer's own size.
 *
 * Fine-tuning on prompt/completion pairs ({@linkcode encodePair}): `[BOS] prompt completion EOS`, the loss
 * on the completion and the EOS only. No chat template is applied: `tokenizer_config.json`'s
 * `chat_template` is a Jinja program, and this library has no Jinja engine; {@linkcode HFTokenizer.chatTemplate}
 * only tells that the model has one. To fine-tune a chat model, write its format into the prompt
 * yourself (LLaMA-2-chat: `"[INST] question [/INST]"`, completion `" answer"`).
 *
 * @example
 * ```ts
 * import { ByteTokenizer } from "./data.ts";
 * import { encodePair, type Tokenizer } from "./tokenizer.ts";
 * import { assert, assertEquals } from "@std/assert";
 * const tok: Tokenizer = new ByteTokenizer();
 * const { ids, labels } = encodePair(tok, "Q: 1+1? A:", " 2");
 * assertEquals([ids[0], ids.at(-1)], [tok.bos, tok.eos]);
 * assertEquals([...labels.slice(-3)], [32, 50, tok.eos]); // " 2" and EOS are learnt, the prompt is not
 * assert(labels.slice(0, -3).every((l) => l === -1));
 * ```
 *
 * @module
 */

// deno-lint-ignore no-import-prefix -- a full specifier: mod.ts imports from any folder, no deno.json needed
import { Tokenizer as HFCoreTokenizer } from "npm:@huggingface/tokenizers@0.2.0";
import { InvalidArgumentError, QloraError } from "../base/mod.ts";

/** Options of a {@linkcode Tokenizer}'s `encode` ({@linkcode ByteTokenizer.encode}, `HFTokenizer.encode`). */
export interface EncodeOptions {
  /** Put BOS first (default false). */
  bos?: boolean;
  /** Put EOS last (default false). */
  eos?: boolean;
}

/**
 * What training code needs of a tokenizer; {@linkcode ByteTokenizer} and {@linkcode HFTokenizer} have it.
 * Ids are integers in `[0, vocabSize)`.
 */
export interface Tokenizer {
  /** Rows an embedding for this tokenizer needs (every id is below it). */
  readonly vocabSize: number;
  /** Beginning-of-sequence id; `undefined` where the model has none. */
  readonly bos: number | undefined;
  /** End-of-sequence id. */
  readonly eos: number;
  /** Padding id; `undefined` where the model has none. */
  readonly pad: number | undefined;
  /**
   * Ids of `text`, with BOS first / EOS last as asked. Where an option is not given, each tokenizer says
   * what it does (ByteTokenizer: neither; HFTokenizer: the model's `add_bos_token` / `add_eos_token`).
   */
  encode(text: string, options?: EncodeOptions): Int32Array;
  /** Text of `ids`, special tokens dropped. */
  decode(ids: ArrayLike<number>): string;
}

/** A prompt/completion example from {@linkcode encodePair}; both arrays have the same length. */
export interface EncodedPair {
  /** `[BOS] prompt completion EOS` (BOS where the tokenizer has one). */
  ids: Int32Array;
  /**
   * `ids` where the loss counts (the completion and the EOS), -1 elsewhere (BOS and prompt). Aligned with
   * `ids`, as Hugging Face's `labels`: for this library's next-token batches shift by one, inputs
   * `ids.subarray(0, n - 1)` and targets `labels.subarray(1)`.
   */
  labels: Int32Array;
  /** Number of leading positions labelled -1 (BOS and the prompt's tokens). */
  promptLength: number;
}

/** Options of {@linkcode encodePair}. */
export interface EncodePairOptions {
  /** Put BOS first where the tokenizer has one (default true). */
  bos?: boolean;
}

/**
 * Encodes a prompt and its completion for fine-tuning: `[BOS] prompt completion EOS`, with labels -1 on
 * BOS and the prompt so that the loss is on the completion (and the EOS that ends it) only.
 *
 * The text is encoded whole, `prompt + completion`, so the ids are those the model sees when it reads
 * the prompt and writes the completion. Tokens the prompt alone also starts with are the prompt's; where
 * a merge crosses the boundary (the prompt ends in the middle of a word), the token holding both sides
 * counts as the completion's. End prompts at a space or newline to avoid that.
 *
 * @example
 * ```ts
 * import { ByteTokenizer } from "./data.ts";
 * import { encodePair } from "./tokenizer.ts";
 * import { assertEquals } from "@std/assert";
 * const { ids, labels, promptLength } = encodePair(new ByteTokenizer(), "hi", "!");
 * assertEquals([...ids], [257, 104, 105, 33, 258]);
 * assertEquals([...labels], [-1, -1, -1, 33, 258]);
 * assertEquals(promptLength, 3);
 * ```
 */
export function encodePair(
  tokenizer: Tokenizer,
  prompt: string,
  completion: string,
  options: EncodePairOptions = {},
): EncodedPair {
  const bos = (options.bos ?? true) && tokenizer.bos !== undefined;
  const whole = tokenizer.encode(prompt + completion, { bos, eos: true });
  const head = tokenizer.encode(prompt, { bos, eos: false });
  let promptLength = 0;
  const limit = Math.min(head.length, whole.length - 1); // the EOS is always learnt
  while (promptLength < limit && head[promptLength] === whole[promptLength]) promptLength++;
  const labels = whole.slice();
  labels.fill(-1, 0, promptLength);
  return { ids: whole, labels, promptLength };
}

// ---------------------------------------------------------------------------------------------------------
// Hugging Face tokenizer.json
// ---------------------------------------------------------------------------------------------------------

/**
 * A model directory's tokenizer file is missing, is not JSON, or holds something that cannot be used.
 * `path` names the file.
 *
 * @example
 * ```ts
 * import { HFTokenizer, TokenizerFileError } from "./tokenizer.ts";
 * import { assert, assertRejects } from "@std/assert";
 * const e = await assertRejects(() => HFTokenizer.fromDir("/nonexistent"), TokenizerFileError);
 * assert(e.path.endsWith("tokenizer.json") && e.message.includes("not found"));
 * ```
 */
export class TokenizerFileError extends QloraError {
  /** The file at fault. */
  readonly path: string;

  /** Creates the error for `path`. */
  constructor(path: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.path = path;
  }
}

/** The parsed files of a model directory, for {@linkcode HFTokenizer.fromFiles}. */
export interface HFTokenizerFiles {
  /** The parsed `tokenizer.json` (required). */
  tokenizer: unknown;
  /** The parsed `tokenizer_config.json`, where the model has one. */
  tokenizerConfig?: unknown;
  /** The parsed `config.json`, where the model has one. */
  config?: unknown;
  /** Where the files came from, for messages (a directory); default `"(in memory)"`. */
  source?: string;
}

/** Options of {@linkcode HFTokenizer.decode}. */
export interface HFDecodeOptions {
  /** Write special tokens (`<s>`, `</s>`...) into the text instead of dropping them (default false). */
  keepSpecial?: boolean;
}

type Json = Record<string, unknown>;

/** The `model.type`s of tokenizer.json that `@huggingface/tokenizers` implements. */
const MODEL_TYPES = ["BPE", "Unigram", "WordPiece"];

type HFTokenizerFields = Pick<
  HFTokenizer,
  | "vocabSize"
  | "size"
  | "bos"
  | "eos"
  | "pad"
  | "unk"
  | "stopIds"
  | "addBos"
  | "addEos"
  | "chatTemplate"
  | "source"
>;

/**
 * A Hugging Face tokenizer (`tokenizer.json`) with the BOS/EOS/PAD conventions of its model directory;
 * see the module documentation for where each comes from. Encoding and decoding are done by the npm
 * package `@huggingface/tokenizers`; special tokens written in the text (`"</s>"`) are matched as such,
 * as in `transformers`.
 *
 * @example
 * ```ts
 * import { HFTokenizer } from "./tokenizer.ts";
 * import { assert, assertEquals } from "@std/assert";
 * const tok = await HFTokenizer.fromDir(new URL("../../tests/data/tokenizer/tiny", import.meta.url));
 * const ids = tok.encode("hello world"); // BOS by default, as the model's add_bos_token says
 * assertEquals(ids[0], tok.bos);
 * assertEquals(tok.decode(ids), "hello world");
 * assert(tok.vocabSize >= tok.size && tok.eos === 2);
 * ```
 */
export class HFTokenizer implements Tokenizer {
  /** Embedding rows: `config.json`'s `vocab_size`, else {@linkcode HFTokenizer.size}. */
  readonly vocabSize: number;
  /** Ids the tokenizer itself knows: its vocabulary and added tokens (the highest id + 1). */
  readonly size: number;
  /** Beginning-of-sequence id, or `undefined`. */
  readonly bos: number | undefined;
  /** End-of-sequence id. */
  readonly eos: number;
  /** Padding id, or `undefined`. */
  readonly pad: number | undefined;
  /** Unknown-token id (`model.unk_token` of tokenizer.json), or `undefined`. */
  readonly unk: number | undefined;
  /** Ids that end a generation: {@linkcode HFTokenizer.eos} first, then any other `eos_token_id` of config.json. */
  readonly stopIds: readonly number[];
  /** Whether `encode` puts BOS first when not told (`add_bos_token`, default true). */
  readonly addBos: boolean;
  /** Whether `encode` puts EOS last when not told (`add_eos_token`, default false). */
  readonly addEos: boolean;
  /**
   * The model's chat template (Jinja source, the default one where there are several), or `undefined`.
   * Not rendered: this library has no Jinja engine (see the module documentation).
   */
  readonly chatTemplate: string | undefined;
  /** The directory (or `"(in memory)"`) the tokenizer came from. */
  readonly source: string;
  readonly #core: HFCoreTokenizer;

  private constructor(core: HFCoreTokenizer, fields: HFTokenizerFields) {
    this.#core = core;
    this.vocabSize = fields.vocabSize;
    this.size = fields.size;
    this.bos = fields.bos;
    this.eos = fields.eos;
    this.pad = fields.pad;
    this.unk = fields.unk;
    this.stopIds = fields.stopIds;
    this.addBos = fields.addBos;
    this.addEos = fields.addEos;
    this.chatTemplate = fields.chatTemplate;
    this.source = fields.source;
  }

  /**
   * Reads `tokenizer.json` and, where present, `tokenizer_config.json` and `config.json` of a model
   * directory. A missing `tokenizer.json`, or a file that is not JSON or not usable, throws
   * {@linkcode TokenizerFileError} naming the file.
   *
   * @example
   * ```ts
   * import { HFTokenizer } from "./tokenizer.ts";
   * import { assertEquals } from "@std/assert";
   * const tok = await HFTokenizer.fromDir(new URL("../../tests/data/tokenizer/tiny", import.meta.url));
   * assertEquals([tok.bos, tok.eos, tok.pad, tok.vocabSize], [1, 2, 3, 64]);
   * ```
   */
  static async fromDir(dir: string | URL): Promise<HFTokenizer> {
    const base = typeof dir === "string" ? dir.replace(/\/*$/, "/") : new URL(dir.href.replace(/\/*$/, "/"));
    const at = (name: string) => typeof base === "string" ? base + name : new URL(name, base);
    const show = (name: string) => typeof base === "string" ? base + name : at(name).toString();
    const read = async (name: string, required: boolean): Promise<unknown> => {
      let text: string;
      try {
        text = await Deno.readTextFile(at(name));
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) {
          throw new TokenizerFileError(show(name), `Cannot read ${show(name)}: ${(e as Error).message}`, {
            cause: e,
          });
        }
        if (!required) return undefined;
        let hint = "";
        try {
          await Deno.stat(at("tokenizer.model"));
          hint =
            " (there is a SentencePiece tokenizer.model: convert it to tokenizer.json with transformers)";
        } catch { /* no hint */ }
        throw new TokenizerFileError(show(name), `Cannot load tokenizer: ${show(name)} not found${hint}`);
      }
      try {
        return JSON.parse(text);
      } catch (e) {
        throw new TokenizerFileError(
          show(name),
          `Cannot load tokenizer: ${show(name)} is not valid JSON: ${(e as Error).message}`,
          { cause: e },
        );
      }
    };
    const [tokenizer, tokenizerConfig, config] = [
      await read("tokenizer.json", true),
      await read("tokenizer_config.json", false),
      await read("config.json", false),
    ];
    return HFTokenizer.fromFiles({ tokenizer, tokenizerConfig, config, source: String(base) });
  }

  /**
   * A tokenizer from already-parsed files (see {@linkcode HFTokenizerFiles}); what {@linkcode HFTokenizer.fromDir}
   * calls after reading them. Errors name the file at fault, relative to `source`.
   *
   * @example
   * ```ts
   * import { HFTokenizer } from "./tokenizer.ts";
   * import { assertEquals } from "@std/assert";
   * const vocab = { "<unk>": 0, "</s>": 1, "▁": 2, "a": 3, "▁a": 4 };
   * const tokenizer = {
   *   added_tokens: [{ id: 1, content: "</s>", special: true }],
   *   normalizer: { type: "Replace", pattern: { String: " " }, content: "▁" },
   *   pre_tokenizer: null,
   *   post_processor: null,
   *   decoder: { type: "Replace", pattern: { String: "▁" }, content: " " },
   *   model: { type: "BPE", vocab, merges: ["▁ a"], unk_token: "<unk>" },
   * };
   * const tok = HFTokenizer.fromFiles({ tokenizer, tokenizerConfig: { eos_token: "</s>", add_bos_token: false } });
   * assertEquals([...tok.encode(" a a", { eos: true })], [4, 4, 1]);
   * assertEquals(tok.bos, undefined);
   * ```
   */
  static fromFiles(files: HFTokenizerFiles): HFTokenizer {
    const source = files.source ?? "(in memory)";
    const file = (name: string) => source === "(in memory)" ? name : source.replace(/\/*$/, "/") + name;
    const fail = (name: string, what: string, cause?: unknown): never => {
      throw new TokenizerFileError(file(name), `Cannot load tokenizer: ${file(name)}: ${what}`, { cause });
    };
    const object = (name: string, value: unknown): Json | undefined => {
      if (value === undefined) return undefined;
      if (value === null || typeof value !== "object" || Array.isArray(value)) {
        fail(name, `expected a JSON object, got ${value === null ? "null" : typeof value}`);
      }
      return value as Json;
    };
    const tj = object("tokenizer.json", files.tokenizer) ?? fail("tokenizer.json", "missing");
    const model = tj.model as Json | undefined;
    if (!model || typeof model !== "object" || typeof model.type !== "string" || !model.vocab) {
      fail("tokenizer.json", 'expected a "model" with a "type" and a "vocab"');
    }
    if (!MODEL_TYPES.includes(model!.type as string)) {
      fail(
        "tokenizer.json",
        `model type ${JSON.stringify(model!.type)} is not one of ${MODEL_TYPES.join(", ")}`,
      );
    }
    const tc = object("tokenizer_config.json", files.tokenizerConfig) ?? {};
    const cfg = object("config.json", files.config) ?? {};

    let core: HFCoreTokenizer;
    try {
      // The package wants every top-level key present (null where unused), as tokenizers' files have them.
      const full = {
        normalizer: null,
        pre_tokenizer: null,
        post_processor: null,
        decoder: null,
        ...tj,
        added_tokens: tj.added_tokens ?? [],
      };
      core = new HFCoreTokenizer(full, {
        ...tc,
        // Decoding returns the text as written unless the model asks for transformers' old clean-up.
        clean_up_tokenization_spaces: tc.clean_up_tokenization_spaces === true,
      });
    } catch (e) {
      return fail("tokenizer.json", (e as Error).message, e);
    }

    let size = 0;
    for (const id of core.get_vocab(true).values()) size = Math.max(size, id + 1);

    // A special token of tokenizer_config.json: a string or {content}; null means "none".
    const tokenId = (key: string): number | null | undefined => {
      const v = tc[key];
      if (v === undefined || v === null) return v as null | undefined;
      const content = typeof v === "string" ? v : (v as Json).content;
      if (typeof content !== "string") {
        return fail("tokenizer_config.json", `${key} must be a string or {content}`);
      }
      const id = core.token_to_id(content);
      if (id === undefined) {
        return fail(
          "tokenizer_config.json",
          `${key} ${JSON.stringify(content)} is not in tokenizer.json's vocabulary`,
        );
      }
      return id;
    };
    const configIds = (key: string): number[] => {
      const v = cfg[key];
      if (v === undefined || v === null) return [];
      const list = Array.isArray(v) ? v : [v];
      if (!list.every((x) => Number.isInteger(x) && x >= 0)) {
        fail(
          "config.json",
          `${key} must be a non-negative integer or a list of them, got ${JSON.stringify(v)}`,
        );
      }
      return list as number[];
    };
    const boolean = (key: string, fallback: boolean): boolean => {
      const v = tc[key];
      if (v === undefined || v === null) return fallback;
      if (typeof v !== "boolean") {
        fail("tokenizer_config.json", `${key} must be true or false, got ${JSON.stringify(v)}`);
      }
      return v as boolean;
    };

    // tokenizer_config.json wins; a null there means "none", an absent key defers to config.json.
    const special = (key: string, configKey: string) => {
      const id = tokenId(key);
      return id === null ? undefined : id ?? configIds(configKey)[0];
    };
    const bos = special("bos_token", "bos_token_id");
    const eosIds = configIds("eos_token_id");
    const eos = special("eos_token", "eos_token_id") ??
      fail(
        files.tokenizerConfig === undefined ? "config.json" : "tokenizer_config.json",
        "no EOS token (tokenizer_config.json's eos_token or config.json's eos_token_id)",
      );
    const pad = special("pad_token", "pad_token_id");
    let vocabSize = size;
    if (cfg.vocab_size !== undefined) {
      if (!Number.isInteger(cfg.vocab_size) || (cfg.vocab_size as number) < size) {
        fail(
          "config.json",
          `vocab_size must be an integer >= ${size} (the tokenizer's ids), got ${cfg.vocab_size}`,
        );
      }
      vocabSize = cfg.vocab_size as number;
    }
    for (const [name, id] of [["bos", bos], ["eos", eos], ["pad", pad], ...eosIds.map((i) => ["eos", i])]) {
      if (id !== undefined && (id as number) >= vocabSize) {
        fail("config.json", `${name} id ${id} is outside the vocabulary [0, ${vocabSize})`);
      }
    }
    const unkToken = model!.unk_token;
    const unk = typeof unkToken === "string" ? core.token_to_id(unkToken) : undefined;

    let chatTemplate: string | undefined;
    const ct = tc.chat_template;
    if (typeof ct === "string") chatTemplate = ct;
    else if (Array.isArray(ct)) {
      const named = ct as { name?: string; template?: string }[];
      chatTemplate = (named.find((t) => t.name === "default") ?? named[0])?.template;
    }

    const tok = new HFTokenizer(core, {
      vocabSize,
      size,
      bos,
      eos,
      pad,
      unk,
      stopIds: [eos, ...eosIds.filter((i) => i !== eos)],
      addBos: boolean("add_bos_token", bos !== undefined),
      addEos: boolean("add_eos_token", false),
      chatTemplate,
      source,
    });
    if (tok.addBos && tok.bos === undefined) {
      fail("tokenizer_config.json", "add_bos_token is true but there is no BOS token");
    }
    return tok;
  }

  /**
   * Ids of `text`; BOS first and EOS last by the model's convention ({@linkcode HFTokenizer.addBos},
   * {@linkcode HFTokenizer.addEos}) unless told. Asking for BOS where the model has none throws.
   */
  encode(text: string, options: EncodeOptions = {}): Int32Array {
    const bos = options.bos ?? this.addBos;
    const eos = options.eos ?? this.addEos;
    if (bos && this.bos === undefined) {
      throw new InvalidArgumentError(
        `Cannot encode with BOS: the tokenizer of ${this.source} has no BOS token`,
      );
    }
    const ids = this.#core.encode(text, { add_special_tokens: false }).ids;
    const out = new Int32Array(ids.length + (bos ? 1 : 0) + (eos ? 1 : 0));
    if (bos) out[0] = this.bos!;
    out.set(ids, bos ? 1 : 0);
    if (eos) out[out.length - 1] = this.eos;
    return out;
  }

  /** Text of `ids`: special tokens dropped unless `keepSpecial`. Ids outside `[0, size)` throw. */
  decode(ids: ArrayLike<number>, options: HFDecodeOptions = {}): string {
    for (let i = 0; i < ids.length; i++) {
      if (!Number.isInteger(ids[i]) || ids[i] < 0 || ids[i] >= this.size) {
        throw new InvalidArgumentError(
          `Cannot decode: id ${ids[i]} at ${i} is outside the tokenizer's ids [0, ${this.size})`,
        );
      }
    }
    if (ids.length === 0) return "";
    return this.#core.decode(Array.from(ids), { skip_special_tokens: !options.keepSpecial });
  }

  /** The tokens (strings, `▁` for a space) `text` splits into, without BOS/EOS: to see what encode does. */
  tokenize(text: string): string[] {
    return this.#core.encode(text, { add_special_tokens: false }).tokens;
  }

  /** The id of a token string (`"▁the"`, `"<s>"`), or `undefined` where the vocabulary lacks it. */
  tokenToId(token: string): number | undefined {
    return this.#core.token_to_id(token);
  }

  /** The token string of an id, or `undefined` outside the tokenizer's ids. */
  idToToken(id: number): string | undefined {
    return this.#core.id_to_token(id);
  }

  /**
   * {@linkcode encodePair} with this tokenizer: `[BOS] prompt completion EOS`, labels -1 on BOS and prompt.
   *
   * @example
   * ```ts
   * import { HFTokenizer } from "./tokenizer.ts";
   * import { assertEquals } from "@std/assert";
   * const tok = await HFTokenizer.fromDir(new URL("../../tests/data/tokenizer/tiny", import.meta.url));
   * const { ids, labels, promptLength } = tok.encodePair("hello", " world");
   * assertEquals(tok.tokenize("hello world"), ["▁hello", "▁world"]);
   * assertEquals([...ids], [tok.bos, tok.tokenToId("▁hello"), tok.tokenToId("▁world"), tok.eos]);
   * assertEquals([...labels], [-1, -1, tok.tokenToId("▁world"), tok.eos]);
   * assertEquals(promptLength, 2);
   * ```
   */
  encodePair(prompt: string, completion: string, options: EncodePairOptions = {}): EncodedPair {
    return encodePair(this, prompt, completion, options);
  }

  /** One line: source, sizes and special ids. */
  toString(): string {
    return `HFTokenizer(${this.source}, ${this.size} tokens, vocabSize ${this.vocabSize}, bos ${this.bos}, ` +
      `eos ${this.eos}, pad ${this.pad})`;
  }
}
