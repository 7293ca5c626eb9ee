import { assert, assertAlmostEquals, assertEquals, assertThrows } from "@std/assert";
import {
  type BatchSource,
  datasetSource,
  getDevice,
  InvalidArgumentError,
  learningRate,
  type LlamaConfig,
  LlamaModel,
  readSafetensors,
  saveCheckpoint,
  Tensor,
  TextDataset,
  Trainer,
  type TrainMode,
} from "../mod.ts";

const device = getDevice();
const SMALL: LlamaConfig = {
  vocabSize: 48,
  dim: 32,
  layers: 2,
  heads: 4,
  kvHeads: 2, // grouped-query attention
  hiddenDim: 64,
  maxSeq: 32,
  normEps: 1e-5,
  ropeTheta: 10000,
};

Deno.test("trainer: loss falls on a learnable sequence; schedule, accumulation, checkpoint", async () => {
  const period = 6;
  const source: BatchSource = {
    trainBatch(b, t) {
      const inputs = new Int32Array(b * t), targets = new Int32Array(b * t);
      for (let i = 0; i < b * t; i++) {
        inputs[i] = (i % t) % period;
        targets[i] = ((i % t) + 1) % period;
      }
      return { inputs, targets };
    },
    validationBatches(b, t) {
      return [this.trainBatch(b, t)];
    },
  };
  const dir = await Deno.makeTempDir();
  try {
    for (const mode of ["full", "qlora"] as TrainMode[]) {
      // A random base with std 0.2 carries enough signal for rank-8 adapters to steer within 30 steps.
      using model = new LlamaModel(SMALL, { mode, seed: 3, rank: 8, alpha: 16, std: 0.2 });
      const b0 = source.trainBatch(2, 16);
      using x0 = Tensor.from(b0.inputs, { shape: [2, 16], device });
      using y0 = Tensor.from(b0.targets, { shape: [2, 16], device });
      const first = model.forward(x0, y0, { backward: false });
      using trainer = new Trainer(model, source, {
        steps: 30,
        batchSize: 2,
        seq: 16,
        lr: 1e-2,
        gradAccumulation: 2,
        checkpointDir: `${dir}/${mode}`,
      });
      const result = await trainer.train();
      assert(result.evalLoss < first * 0.5, `${mode}: ${first} -> ${result.evalLoss}`);
      assertEquals(result.history.length, 30);
      assertAlmostEquals(result.evalPerplexity, Math.exp(result.evalLoss), 1e-9);
      assert(result.history.every((h) => h.memory.totalPeak >= h.memory.totalCurrent));
      if (mode === "qlora") {
        assertEquals(trainer.optimizer.constructor.name, "PagedAdamW");
        const adapters = await readSafetensors(`${dir}/qlora/adapter_model.safetensors`);
        const key = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight";
        assertEquals(adapters.get(key)?.info.shape, [8, 32]);
        assertEquals(
          adapters.get("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight")?.info.shape,
          [32, 8],
        );
        const cfg = JSON.parse(await Deno.readTextFile(`${dir}/qlora/adapter_config.json`));
        assertEquals([cfg.peft_type, cfg.r, cfg.lora_alpha], ["LORA", 8, 16]);
        assertEquals(cfg.target_modules.length, 7);
      } else {
        const files = await saveCheckpoint(model, `${dir}/again`, { step: 1, loss: 0 });
        assert(files.some((f) => f.endsWith("model.safetensors")));
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  assertAlmostEquals(learningRate(0, 100, 10, 1, 0.1), 1 / 11);
  assertAlmostEquals(learningRate(99, 100, 10, 1, 0.1), 0.1);
});

Deno.test("trainer: bad options are refused before any step", () => {
  using model = new LlamaModel(SMALL, { mode: "lora", rank: 2 });
  const data = datasetSource(TextDataset.fromText("xyz ".repeat(100)));
  assertThrows(() => new Trainer(model, data, { steps: 0, batchSize: 1, seq: 8 }), InvalidArgumentError);
  const ok = { steps: 1, batchSize: 1, seq: 8 };
  assertThrows(() => new Trainer(model, data, { ...ok, batchSize: 1.5 }), InvalidArgumentError, "batchSize");
  assertThrows(
    () => new Trainer(model, data, { ...ok, optimizer: "sgd" as "adamw" }),
    InvalidArgumentError,
    "optimizer",
  );
  assertThrows(
    () => new Trainer(model, data, { ...ok, checkpointKeep: 0 }),
    InvalidArgumentError,
    "checkpointKeep",
  );
  assertThrows(
    () => new Trainer(model, data, { ...ok, resume: true }),
    InvalidArgumentError,
    "checkpointDir",
  );
});
