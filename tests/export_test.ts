// `deno task export` on a tiny model directory in transformers' layout with a PEFT adapter: the file it
// writes is the one exportGGUF writes from the same model built in this process; --help and bad flags.
import { assertEquals, assertNotEquals, assertStringIncludes } from "@std/assert";
import {
  exportGGUF,
  getDevice,
  GGUFReader,
  ggufTokenizerMetadata,
  LlamaModel,
  loadAdapter,
  LoRALinear,
  openModelDir,
  saveCheckpoint,
} from "../mod.ts";
import { CONFIG, tinyModelDir } from "./_gguf_model.ts";
import { runScript } from "./_run_script.ts";

async function exportScript(args: string[]): Promise<{ code: number; out: string }> {
  const r = await runScript("export.ts", args);
  return { code: r.code, out: r.stdout + r.stderr };
}

const SMALL = { ...CONFIG, layers: 2 };

Deno.test("export: --help lists every option with its default; bad flags say what is wrong", async () => {
  const help = await exportScript(["--help"]);
  assertEquals(help.code, 0, help.out);
  for (
    const flag of ["--model", "--gguf", "--adapter", "--mode", "--type", "--keep-embeddings-bf16", "--dtype"]
  ) {
    const line = help.out.split("\n").find((l) => l.trimStart().startsWith(flag));
    assertStringIncludes(line ?? `no line for ${flag}`, flag);
    if (!/required/.test(line!)) assertStringIncludes(line!, "default");
  }
  assertEquals((await exportScript(["-h"])).code, 0);
  for (
    const [args, message] of [
      [["--model", "m", "--bogus"], "unknown flag --bogus"],
      [["--model", "m"], "--model and --gguf are required"],
      [
        ["--model", "m", "--gguf", "o.gguf", "--type", "q5_k"],
        "--type must be one of bf16, q8_0, q4_0, iq4_nl",
      ],
      [["--model", "m", "--gguf", "o.gguf", "--mode", "full"], "--mode must be lora or qlora"],
      [["--model", "/nonexistent", "--gguf", "o.gguf"], "Cannot read /nonexistent/config.json"],
    ] as const
  ) {
    const r = await exportScript([...args]);
    assertEquals(r.code, 1, r.out);
    assertStringIncludes(r.out, `error: ${message}`);
  }
});

Deno.test("export: a QLoRA adapter merged into the NF4 base, as Q8_0: the file exportGGUF writes in-process", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const dir = `${tmp}/tiny-llama`, adapter = `${tmp}/adapter`;
    await tinyModelDir(dir, { config: SMALL, std: 0.1 });
    using base = await openModelDir(dir);
    const options = { mode: "qlora" as const, rank: 4, alpha: 8, device: getDevice("cpu") };
    {
      using trained = new LlamaModel(SMALL, { ...options, weights: base.weights });
      for (const l of Object.values(trained.block(1))) {
        if (l instanceof LoRALinear) l.loraB.copyFrom(new Float32Array(l.loraB.numel).fill(0.01));
      }
      await saveCheckpoint(trained, adapter, { step: 1, loss: 0 }, { baseModel: "tiny-llama" });
    }
    const r = await exportScript([
      "--model",
      dir,
      "--adapter",
      adapter,
      "--mode",
      "qlora",
      "--gguf",
      `${tmp}/out.gguf`,
      "--type",
      "q8_0",
      "--dtype",
      "f32",
    ]);
    assertEquals(r.code, 0, r.out);
    console.log(r.out.trim());
    assertStringIncludes(r.out, `wrote ${tmp}/out.gguf: `);
    assertStringIncludes(r.out, "(Q8_0 16, F32 5)");
    // 16 matrices (q, o 64x64; k, v 32x64; three MLP 64x128 per block; embedding and head 320x64) of 8.5
    // bits a weight (34 bytes a block of 32), and five F32 norms of 64
    const matrices = 2 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 64 * 128) + 2 * 320 * 64, norms = 5 * 64;
    assertStringIncludes(
      r.out,
      ` ${((8.5 * matrices + 32 * norms) / (matrices + norms)).toFixed(3)} bits per weight`,
    );

    using model = new LlamaModel(SMALL, { ...options, weights: base.weights });
    await loadAdapter(model, adapter);
    const metadata = await ggufTokenizerMetadata(dir);
    await exportGGUF(model, `${tmp}/here.gguf`, { type: "q8_0", name: "tiny-llama", metadata });
    assertEquals(await Deno.readFile(`${tmp}/out.gguf`), await Deno.readFile(`${tmp}/here.gguf`));

    // The adapter is in it: without it block 1 differs, block 0 (no adapter change) does not.
    const r2 = await exportScript([
      "--model",
      dir,
      "--mode",
      "qlora",
      "--gguf",
      `${tmp}/base.gguf`,
      "--type",
      "q8_0",
      "--dtype",
      "f32",
    ]);
    assertEquals(r2.code, 0, r2.out);
    using a = await GGUFReader.open(`${tmp}/out.gguf`), b = await GGUFReader.open(`${tmp}/base.gguf`);
    assertEquals(await a.readRaw("blk.0.ffn_up.weight"), await b.readRaw("blk.0.ffn_up.weight"));
    assertNotEquals(await a.readRaw("blk.1.ffn_up.weight"), await b.readRaw("blk.1.ffn_up.weight"));
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
