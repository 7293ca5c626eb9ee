// `deno task generate` on a tiny model directory in transformers' layout with the tiny tokenizer: it streams
// the text the library's greedy generation gives, with and without a PEFT adapter (written here with
// random non-zero adapters, so that the adapter changes the text), `--compare` prints both, `--help`
// lists every option, and bad command lines fail with a message.
import { assert, assertEquals, assertNotEquals, assertStringIncludes } from "@std/assert";
import {
  fillUniform,
  getDevice,
  HFTokenizer,
  LlamaModel,
  LoRALinear,
  saveCheckpoint,
  TARGET_MODULES,
} from "../mod.ts";
import { tinyModelDir } from "./_gguf_model.ts";
import { runScript } from "./_run_script.ts";

const CONFIG = {
  vocabSize: 64,
  dim: 32,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  hiddenDim: 64,
  maxSeq: 64,
  normEps: 1e-5,
  ropeTheta: 10000,
};
const PROMPT = "hello world";

const generate = (args: string[]) => runScript("generate.ts", args);

/** The library's own greedy completion of PROMPT (f32, as the commands below run). */
async function completion(dir: string, adapter: string | null, mode: "full" | "qlora"): Promise<string> {
  const tok = await HFTokenizer.fromDir(dir);
  const { openModelDir, loadAdapter } = await import("../mod.ts");
  using source = await openModelDir(dir);
  using model = new LlamaModel(source.hf.config, {
    mode,
    dtype: "f32",
    rank: 4,
    alpha: 8,
    weights: source.weights,
    device: getDevice("cpu"),
  });
  if (adapter) await loadAdapter(model, adapter);
  const [ids] = await model.generate(tok.encode(PROMPT), {
    maxNewTokens: 12,
    stopTokens: tok.stopIds,
    vocabLimit: tok.size,
  }).collect();
  return tok.decode(ids);
}

Deno.test("generate: streams the library's greedy text, with and without an adapter; --compare shows both", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const dir = `${tmp}/tiny-llama`, adapter = `${tmp}/adapter`;
    {
      await tinyModelDir(dir, { config: CONFIG, seed: 1, std: 0.3, bytes: false });
      using tuned = new LlamaModel(CONFIG, { mode: "qlora", rank: 4, alpha: 8, device: getDevice("cpu") });
      for (let i = 0; i < CONFIG.layers; i++) {
        for (const name of TARGET_MODULES) {
          const l = tuned.block(i)[name];
          if (l instanceof LoRALinear) fillUniform(l.loraB, -0.5, 0.5, 7 * i + name.length);
        }
      }
      await saveCheckpoint(tuned, adapter, { step: 1, loss: 0 });
    }
    const common = ["--model", dir, "--prompt", PROMPT, "--max-new-tokens", "12", "--dtype", "f32"];

    // A budget with a reserve: the ledger's budget is the difference, and the text is the same.
    const plain = await generate([...common, "--budget", "1GiB", "--reserve", "0.25GiB"]);
    assertEquals(plain.code, 0, plain.stderr);
    assertStringIncludes(plain.stdout, "budget 768.00 MiB");
    const want = await completion(dir, null, "full");
    assertStringIncludes(plain.stdout, `${PROMPT}${want}\n`);
    assert(/decode \d+ steps in [0-9.]+ s \([0-9.]+ tok\/s\)/.test(plain.stdout), plain.stdout);
    assertStringIncludes(plain.stdout, "prefill 1 x 3 tokens");
    assertStringIncludes(plain.stdout, "kv_cache");
    assertStringIncludes(plain.stdout, "weights");

    const tuned = await generate([...common, "--adapter", adapter]);
    assertEquals(tuned.code, 0, tuned.stderr);
    const wantTuned = await completion(dir, adapter, "qlora");
    assertNotEquals(wantTuned, want, "the adapter changes nothing: the test cannot tell");
    assertStringIncludes(tuned.stdout, `adapter: ${PROMPT}${wantTuned}\n`);

    const both = await generate([...common, "--adapter", adapter, "--compare"]);
    assertEquals(both.code, 0, both.stderr);
    const base4 = await completion(dir, null, "qlora"); // the NF4 base alone
    assertStringIncludes(both.stdout, `base: ${PROMPT}${base4}\n`);
    assertStringIncludes(both.stdout, `adapter: ${PROMPT}${wantTuned}\n`);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("generate: --help lists every option; bad command lines fail with a message", async () => {
  const help = await generate(["--help"]);
  assertEquals(help.code, 0);
  for (
    const flag of [
      "--model",
      "--prompt",
      "--adapter",
      "--mode",
      "--compare",
      "--temperature",
      "--top-p",
      "--budget",
      "--reserve",
    ]
  ) {
    assertStringIncludes(help.stdout, flag);
  }
  for (
    const [args, message] of [
      [[], "--model is required"],
      [["--model", "x"], "--prompt"],
      [["--model", "x", "--prompt", "a", "--mode", "int8"], "--mode must be"],
      [["--model", "x", "--prompt", "a", "--compare"], "need --adapter"],
      [["--model", "x", "--prompt", "a", "--top-p", "2"], "--top-p"],
      [["--model", "x", "--prompt", "a", "--frobnicate"], "unknown flag --frobnicate"],
      [["--model", "x", "--prompt", "a", "--reserve", "1GiB"], "--reserve needs --budget"],
      [["--model", "x", "--prompt", "a", "--budget", "1GiB", "--reserve", "2GiB"], "smaller than --budget"],
    ] as const
  ) {
    const r = await generate([...args]);
    assertEquals(r.code, 1, `${args.join(" ")}: ${r.stdout}`);
    assertStringIncludes(r.stderr, message);
  }
});
