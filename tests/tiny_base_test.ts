import { assert, assertEquals, assertRejects } from "@std/assert";
import { ByteTokenizer, InvalidArgumentError, type LlamaConfig, loadWeights, tinyBase } from "../mod.ts";

// Small enough to pretrain in a second; the tiny base's batches are 128 tokens long.
const SMALL: LlamaConfig = {
  vocabSize: 320,
  dim: 32,
  layers: 1,
  heads: 2,
  kvHeads: 2,
  hiddenDim: 64,
  maxSeq: 128,
  normEps: 1e-5,
  ropeTheta: 10000,
};
const NAME = "model.layers.0.mlp.down_proj.weight";
const SHAPE = [SMALL.dim, SMALL.hiddenDim];

Deno.test("tinyBase: pretrains and saves where there is no file, then loads the same weights", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/cache/tiny-base.safetensors`; // the folder is made
    const lines: string[] = [];
    let steps = 0;
    const made = await tinyBase({
      path,
      config: SMALL,
      steps: 3,
      log: (l) => lines.push(l),
      onStep: () => steps++,
    });
    assertEquals(steps, 3);
    assert(!made.loaded);
    assert(made.source.startsWith("pretrained here on Brown (3 steps"), made.source);
    assert(made.source.endsWith(`saved to ${path}`), made.source);
    const file = await loadWeights(path);
    assertEquals(file.config, SMALL);
    assertEquals(file.weights(NAME, SHAPE), made.weights(NAME, SHAPE));

    const again = await tinyBase({ path, config: SMALL, steps: 3, log: (l) => lines.push(l) });
    assert(again.loaded);
    assertEquals(again.source, `loaded from ${path}`);
    assertEquals(again.config, SMALL);
    assertEquals(again.weights(NAME, SHAPE), made.weights(NAME, SHAPE));
    assert(lines.some((l) => l.includes("loaded")), lines.join("\n"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tinyBase: a file of another configuration is kept, not overwritten; null keeps nothing", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/tiny-base.safetensors`;
    await tinyBase({ path, config: SMALL, steps: 1 });
    const before = await Deno.readFile(path);
    const wider = { ...SMALL, hiddenDim: 96 };
    const other = await tinyBase({ path, config: wider, steps: 1 });
    assert(!other.loaded);
    assert(!other.source.includes("saved"), other.source);
    assertEquals(other.config, wider);
    assertEquals(other.weights(NAME, [SMALL.dim, 96])?.length, SMALL.dim * 96);
    assertEquals(await Deno.readFile(path), before);

    const none = await tinyBase({ path: null, config: SMALL, steps: 1 });
    assert(!none.loaded && !none.source.includes("saved"), none.source);
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["tiny-base.safetensors"]);
    // The same recipe makes the same base: pretraining is deterministic.
    const first = await loadWeights(path);
    assertEquals(none.weights(NAME, SHAPE), first.weights(NAME, SHAPE));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tinyBase: bad options are refused before any work", async () => {
  await assertRejects(() => tinyBase({ path: null, config: SMALL, steps: 0 }), InvalidArgumentError, "steps");
  await assertRejects(
    () => tinyBase({ path: null, config: { ...SMALL, vocabSize: 100 }, tokenizer: new ByteTokenizer() }),
    InvalidArgumentError,
    "tokenizer has",
  );
});
