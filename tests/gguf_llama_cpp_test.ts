// llama.cpp itself reads our GGUF exports (node-llama-cpp 3.21.1's prebuilt CPU binary, installed with npm
// under build/llama-cpp/ on first use and driven by tests/_llama_cpp_runner.mjs under Node.js): its GGUF
// parser reads the header we wrote, its tokenizer tokenizes as HFTokenizer does, and its greedy tokens and
// logits match our model's. Skipped, with the reason, only where the npm registry cannot be reached
// (scripts/_node_llama_cpp.ts installs it).
import { assertEquals, assertGreater, assertLess, assertNotEquals } from "@std/assert";
import {
  exportGGUF,
  getDevice,
  GGML_TYPES,
  ggufArray,
  ggufPlain,
  GGUFReader,
  ggufTensorName,
  ggufTokenizerMetadata,
  type GGUFWeightType,
  GGUFWriter,
  HFTokenizer,
  LlamaModel,
  openModelDir,
  unpermuteRope,
} from "../mod.ts";
import {
  argmax,
  CONFIG,
  ggufWeights,
  greedyTokens,
  logitRows,
  logSoftmax,
  ROOT,
  tinyModelDir,
} from "./_gguf_model.ts";
import { ensureNodeLlamaCpp, NODE_LLAMA_CPP_MODULES, runCommand } from "../scripts/_node_llama_cpp.ts";

const NEW_TOKENS = 16;
// The fixture: std 0.15 keeps the three blocks from amplifying rounding errors chaotically (at 0.3 a 0.04
// rounding difference grows to 0.4 in the logits), and seed 39 gives greedy steps whose top-2 logit margins
// are all at least 0.16, 3x llama.cpp's BF16 rounding error, so "same greedy tokens" is a fair demand.
const SEED = 39, STD = 0.15;

interface Job {
  path: string;
  texts?: string[];
  detokenize?: number[][];
  prompt?: number[];
  generate?: number;
  forced?: number[];
}

interface LlamaCppResult {
  path: string;
  header: {
    version: number;
    metadata: Record<string, unknown>;
    tensors: { name: string; dimensions: number[]; ggmlType: number; offset: number }[];
  };
  special: { bos: number; eos: number };
  tokenize: number[][];
  detokenize: string[];
  greedy?: { tokens: number[]; logProbs: (number | null)[][] };
  forced?: (number | null)[][];
  ms: { load: number; run: number };
}

async function llamaCpp(jobs: Job[], dir: string): Promise<{ llamaCpp: unknown; results: LlamaCppResult[] }> {
  const request = `${dir}/request.json`;
  await Deno.writeTextFile(request, JSON.stringify({ models: jobs }));
  const r = await runCommand("node", [`${ROOT}tests/_llama_cpp_runner.mjs`, NODE_LLAMA_CPP_MODULES, request]);
  assertEquals(r.code, 0, `the llama.cpp runner failed:\n${r.err}\n${r.out}`);
  return JSON.parse(r.out.trim().split("\n").at(-1)!);
}

/** Largest |a - b| over the entries both have (llama.cpp gives null for a probability of 0). */
function maxDiff(a: (number | null)[], b: number[]): number {
  let d = 0;
  a.forEach((x, j) => x !== null && (d = Math.max(d, Math.abs(x - b[j]))));
  return d;
}

/** Gap between the largest and the second largest value. */
function margin(row: ArrayLike<number>): number {
  const s = Array.from(row).sort((x, y) => y - x);
  return s[0] - s[1];
}

const agreeing = (a: readonly number[], b: readonly number[]) => a.filter((t, i) => t === b[i]).length;

/** llama.cpp's nested metadata object flattened to dotted keys. */
function flatten(
  o: Record<string, unknown>,
  prefix = "",
  out = new Map<string, unknown>(),
): Map<string, unknown> {
  for (const [k, v] of Object.entries(o)) {
    if (v && typeof v === "object" && !Array.isArray(v)) {
      flatten(v as Record<string, unknown>, `${prefix}${k}.`, out);
    } else out.set(prefix + k, v);
  }
  return out;
}

/** The BF16 export with q/k rows as transformers stores them (no RoPE permutation), which llama.cpp misreads. */
async function withoutPermutation(from: string, to: string): Promise<void> {
  using reader = await GGUFReader.open(from);
  await using writer = await GGUFWriter.create(to, reader.metadata, reader.tensors);
  for (const t of reader.tensors) {
    let bytes = await reader.readRaw(t.name);
    const heads = /attn_q\.weight$/.test(t.name)
      ? CONFIG.heads
      : /attn_k\.weight$/.test(t.name)
      ? CONFIG.kvHeads
      : 0;
    if (heads) {
      const rows = unpermuteRope(Float32Array.from(new Uint16Array(bytes.buffer)), heads, t.shape[1]); // bf16 bits, moved whole
      bytes = new Uint8Array(Uint16Array.from(rows).buffer);
    }
    await writer.write(t.name, bytes);
  }
  await writer.close();
}

/** A copy of a GGUF file with every token's score -1000, as llama.cpp's converter writes a tokenizer.json's. */
async function withFlatScores(from: string, to: string): Promise<void> {
  using reader = await GGUFReader.open(from);
  const metadata = new Map(reader.metadata);
  const n = (reader.value("tokenizer.ggml.scores") as number[]).length;
  metadata.set("tokenizer.ggml.scores", ggufArray("f32", new Array(n).fill(-1000)));
  await using writer = await GGUFWriter.create(to, metadata, reader.tensors);
  for (const t of reader.tensors) await writer.write(t.name, await reader.readRaw(t.name));
  await writer.close();
}

/** A model on the weights a GGUF file holds (dequantized, q/k un-permuted): what llama.cpp should compute. */
async function modelOf(path: string): Promise<LlamaModel> {
  using reader = await GGUFReader.open(path);
  const values = new Map<string, Float32Array>();
  for (const t of reader.tensors) values.set(t.name, await reader.read(t.name));
  const weights = ggufWeights((name) => values.get(name)!, ggufTensorName, CONFIG);
  return new LlamaModel(CONFIG, { mode: "full", weights, device: getDevice("cpu") });
}

// What is compared, for each export: llama.cpp's log-probabilities (softmax of its logits) at every position
// of one fixed sequence (the prompt and our BF16 greedy continuation: teacher forcing, so one early
// difference does not change every later input) against ours, computed in f32 by this library on the very
// weights the file holds (read back and dequantized). What may differ is llama.cpp's arithmetic only: it
// rounds a matmul's activations to the weight type's dot-product partner (BF16 for BF16 weights, Q8_0 blocks
// for Q8_0, Q4_0 and IQ4_NL: up to half a step of 1/127 of a block's largest value) and keeps K and V in f16.
// Measured here: at most 0.05 (BF16) and 0.21 (the others); asserted: 0.1 and 0.35.
const TOLERANCE: Record<string, number> = { bf16: 0.1, q8_0: 0.35, q4_0: 0.35, iq4_nl: 0.35 };

Deno.test("llama.cpp runs our GGUF exports: header, tokenizer, greedy tokens, logits", async () => {
  const skip = await ensureNodeLlamaCpp();
  if (skip) {
    console.log(`SKIPPED (llama.cpp check not run): ${skip}`);
    return;
  }
  const tmp = await Deno.makeTempDir();
  try {
    const dir = `${tmp}/tiny-llama`;
    await tinyModelDir(dir, { seed: SEED, std: STD });
    using modelDir = await openModelDir(dir);
    using model = new LlamaModel(modelDir.hf.config, {
      mode: "full",
      weights: modelDir.weights,
      device: getDevice("cpu"),
    });
    const tokenizer = await HFTokenizer.fromDir(dir);
    const metadata = await ggufTokenizerMetadata(dir);
    const types: GGUFWeightType[] = ["bf16", "q8_0", "q4_0", "iq4_nl"];
    for (const type of types) {
      await exportGGUF(model, `${tmp}/${type}.gguf`, { type, metadata, name: "tiny" });
    }
    await withoutPermutation(`${tmp}/bf16.gguf`, `${tmp}/unpermuted.gguf`);
    await withFlatScores(`${tmp}/bf16.gguf`, `${tmp}/flat-scores.gguf`);

    const prompt = [...tokenizer.encode("hello world")];
    const ours = await greedyTokens(model, prompt, NEW_TOKENS);
    assertGreater(new Set(ours).size, 8, `a greedy continuation worth comparing: ${ours}`);
    const forced = [...prompt, ...ours];
    const texts = [
      "hello world",
      "w  hello",
      "héllo\nworld!",
      " hello  world ",
      "some test text here",
      "Zürich ☃ 42\t!",
    ];
    const names = [...types, "unpermuted"];
    const t0 = performance.now();
    const answer = await llamaCpp(
      [...names, "flat-scores"].map((name, i) => ({
        path: `${tmp}/${name}.gguf`,
        ...(i < names.length ? { prompt, generate: NEW_TOKENS, forced } : {}),
        ...(i === 0 || i === names.length
          ? { texts, detokenize: texts.map((s) => [...tokenizer.encode(s, { bos: false })]) }
          : {}),
      })),
      tmp,
    );
    console.log(
      `llama.cpp ${JSON.stringify(answer.llamaCpp)} ran ${names.length + 1} files in ${
        ((performance.now() - t0) / 1000).toFixed(1)
      } s`,
    );
    const results = Object.fromEntries([...names, "flat-scores"].map((n, i) => [n, answer.results[i]]));

    // Its own GGUF parser reads the header we wrote: every metadata value, every tensor's place.
    for (const type of types) {
      using reader = await GGUFReader.open(`${tmp}/${type}.gguf`);
      const theirs = flatten(results[type].header.metadata);
      assertEquals([...theirs.keys()].sort(), [...reader.metadata.keys()].sort());
      for (const [key, value] of reader.metadata) assertEquals(theirs.get(key), ggufPlain(value), key);
      assertEquals(
        results[type].header.tensors,
        reader.tensors.map((t) => ({
          name: t.name,
          dimensions: [...t.shape].reverse(),
          ggmlType: GGML_TYPES[t.type].id,
          offset: t.offset - reader.dataOffset,
        })),
      );
    }

    // Its tokenizer: the same ids as HFTokenizer (byte fallback, spaces, merges by rank), the same text back.
    const bf16 = results.bf16;
    assertEquals([bf16.special.bos, bf16.special.eos], [tokenizer.bos, tokenizer.eos]);
    assertEquals(bf16.tokenize, texts.map((s) => [...tokenizer.encode(s, { bos: false })]));
    assertEquals(bf16.detokenize, texts);
    // With the converter's flat scores llama.cpp merges the leftmost pair first: "w  hello" comes out
    // w|▁▁|h|e|ll|o where BPE's ranks give ▁w|▁|▁hello.
    const flat = results["flat-scores"].tokenize;
    assertNotEquals(flat[1], bf16.tokenize[1]);
    assertEquals(flat[1].map((id) => tokenizer.idToToken(id)), ["▁w", "▁▁", "h", "e", "ll", "o"]);

    // BF16 holds the model's weights exactly: the same greedy tokens, log-probabilities within rounding.
    const oursForced = logitRows(model, forced);
    const bf16Error = Math.max(...bf16.forced!.map((row, p) => maxDiff(row, logSoftmax(oursForced[p]))));
    assertLess(bf16Error, TOLERANCE.bf16, "BF16: llama.cpp's log-probabilities against ours");
    const margins = oursForced.slice(prompt.length - 1, -1).map(margin);
    assertGreater(Math.min(...margins), 2 * bf16Error, "the fixture's greedy steps are no near-ties");
    assertEquals(bf16.greedy!.tokens, ours);

    // Without the q/k permutation llama.cpp computes another attention: other tokens, logits far off.
    const unpermutedError = Math.max(
      ...results.unpermuted.forced!.map((row, p) => maxDiff(row, logSoftmax(oursForced[p]))),
    );
    assertGreater(unpermutedError, 20 * bf16Error);
    assertNotEquals(results.unpermuted.greedy!.tokens, ours);

    const lines = [
      `BF16: greedy ${agreeing(bf16.greedy!.tokens, ours)}/${NEW_TOKENS} equal, max |log p| error ${
        bf16Error.toFixed(3)
      } (without the q/k permutation: ${unpermutedError.toFixed(2)})`,
    ];
    for (const type of types) {
      const r = results[type];
      using exported = await modelOf(`${tmp}/${type}.gguf`);
      const rows = logitRows(exported, forced);
      const error = Math.max(...r.forced!.map((row, p) => maxDiff(row, logSoftmax(rows[p]))));
      const fromOriginal = Math.max(...r.forced!.map((row, p) => maxDiff(row, logSoftmax(oursForced[p]))));
      assertLess(error, TOLERANCE[type], `${type}: llama.cpp against this library on the file's weights`);
      const nextEqual = rows.filter((row, p) =>
        argmax(row) === argmax(r.forced![p].map((x) => x ?? -Infinity))
      );
      if (type === "q4_0" || type === "iq4_nl") {
        // 4-bit weights move the logits far more than llama.cpp's arithmetic: its numbers are those of the
        // weights as our dequantizer reads them, not of the original weights.
        assertLess(error, fromOriginal / 4, `${type}: llama.cpp follows our dequantized weights`);
      }
      const ownGreedy = await greedyTokens(exported, prompt, NEW_TOKENS);
      if (type === "q8_0") {
        assertGreater(
          agreeing(r.greedy!.tokens, ours),
          NEW_TOKENS * 3 / 4,
          "Q8_0 greedy tokens mostly agree",
        );
      }
      lines.push(
        `${type}: greedy ${agreeing(r.greedy!.tokens, ours)}/${NEW_TOKENS} equal to the original model's, ` +
          `${
            agreeing(r.greedy!.tokens, ownGreedy)
          }/${NEW_TOKENS} to ours on the file's weights; max |log p| error ` +
          `${error.toFixed(3)} against ours on the file's weights (${
            fromOriginal.toFixed(3)
          } against the original), ` +
          `teacher-forced next token equal at ${nextEqual.length}/${rows.length} positions`,
      );
    }
    console.log(lines.join("\n"));
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
