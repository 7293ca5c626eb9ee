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
  saveModelDir,
  TARGET_MODULES,
} from "../mod.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const TOKENIZER = `${ROOT}tests/data/tokenizer/tiny`;
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

async function generate(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}scripts/generate.ts`, ...args],
    env: { QLORA_BACKEND: "cpu" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout), err: dec.decode(r.stderr) };
}

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
      using base = new LlamaModel(CONFIG, { mode: "full", seed: 1, std: 0.3, device: getDevice("cpu") });
      await saveModelDir(base, dir, {
        dtype: "f32",
        config: { bos_token_id: 1, eos_token_id: 2, pad_token_id: 3 },
      });
      for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
        await Deno.copyFile(`${TOKENIZER}/${f}`, `${dir}/${f}`);
      }
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

    const plain = await generate(common);
    assertEquals(plain.code, 0, plain.err);
    const want = await completion(dir, null, "full");
    assertStringIncludes(plain.out, `${PROMPT}${want}\n`);
    assert(/decode \d+ steps in [0-9.]+ s \([0-9.]+ tok\/s\)/.test(plain.out), plain.out);
    assertStringIncludes(plain.out, "prefill 1 x 3 tokens");
    assertStringIncludes(plain.out, "kv_cache");
    assertStringIncludes(plain.out, "weights");

    const tuned = await generate([...common, "--adapter", adapter]);
    assertEquals(tuned.code, 0, tuned.err);
    const wantTuned = await completion(dir, adapter, "qlora");
    assertNotEquals(wantTuned, want, "the adapter changes nothing: the test cannot tell");
    assertStringIncludes(tuned.out, `adapter: ${PROMPT}${wantTuned}\n`);

    const both = await generate([...common, "--adapter", adapter, "--compare"]);
    assertEquals(both.code, 0, both.err);
    const base4 = await completion(dir, null, "qlora"); // the NF4 base alone
    assertStringIncludes(both.out, `base: ${PROMPT}${base4}\n`);
    assertStringIncludes(both.out, `adapter: ${PROMPT}${wantTuned}\n`);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("generate: --help lists every option; bad command lines fail with a message", async () => {
  const help = await generate(["--help"]);
  assertEquals(help.code, 0);
  for (
    const flag of ["--model", "--prompt", "--adapter", "--mode", "--compare", "--temperature", "--top-p"]
  ) {
    assertStringIncludes(help.out, flag);
  }
  for (
    const [args, message] of [
      [[], "--model is required"],
      [["--model", "x"], "--prompt"],
      [["--model", "x", "--prompt", "a", "--mode", "int8"], "--mode must be"],
      [["--model", "x", "--prompt", "a", "--compare"], "need --adapter"],
      [["--model", "x", "--prompt", "a", "--top-p", "2"], "--top-p"],
      [["--model", "x", "--prompt", "a", "--frobnicate"], "unknown flag --frobnicate"],
    ] as const
  ) {
    const r = await generate([...args]);
    assertEquals(r.code, 1, `${args.join(" ")}: ${r.out}`);
    assertStringIncludes(r.err, message);
  }
});
