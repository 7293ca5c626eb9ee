import { assert, assertAlmostEquals, assertEquals, assertThrows } from "@std/assert";
import {
  AdamW,
  adapterParameters,
  CATEGORIES,
  countParameters,
  estimateMemory,
  getDevice,
  InvalidArgumentError,
  LLAMA_CONFIGS,
  type LlamaConfig,
  LlamaModel,
  maxSequenceWithin,
  nf4BitsPerParameter,
  PagedAdamW,
  quantizedBytes,
  Tensor,
  type TrainMode,
} from "../mod.ts";

const C7 = LLAMA_CONFIGS["7b"];
// Hand-computed for LLaMA-2-7B: vocab 32000, dim 4096, 32 layers, MLP 11008, no GQA.
const P7 = 6_738_415_616; // 2·32000·4096 + 32·(4·4096² + 3·4096·11008 + 2·4096) + 4096
const LINEAR_7B = 6_476_005_376; // 32 · 202,375,168
const ADAPTERS_7B = 19_988_480; // 32 · (4 · 8·(4096+4096) + 3 · 8·(4096+11008))

Deno.test("estimate: the 7B parameter count is 6.74B, split exactly", () => {
  const p = countParameters(C7);
  assertEquals(p.embedding, 131_072_000);
  assertEquals(p.lmHead, 131_072_000);
  assertEquals(p.norms, 65 * 4096);
  assertEquals(p.linearPerLayer, 202_375_168);
  assertEquals(p.linear, LINEAR_7B);
  assertEquals(p.total, P7);
  assertEquals(adapterParameters(C7, 8), ADAPTERS_7B);
  assertEquals(adapterParameters(C7, 8, ["q_proj"]) / 32, 65_536); // the seed document's 65,536
});

Deno.test("estimate: NF4 with double quantization stores 4.127 bits per quantized parameter", () => {
  assertEquals(nf4BitsPerParameter(), 4 + 8 / 64 + 32 / (64 * 256)); // 4.126953125
  assertAlmostEquals(nf4BitsPerParameter(), 4.127, 1e-3);
  assertEquals(nf4BitsPerParameter({ doubleQuant: false }), 4.5);
  // q_proj of 7B: 16,777,216 values -> 8,388,608 packed bytes, 262,144 u8 codes + 1,024 f32 scales.
  assertEquals(quantizedBytes(4096 * 4096), { packed: 8_388_608, constants: 262_144 + 4 * 1024 });
  assertEquals(quantizedBytes(4096 * 4096, { doubleQuant: false }).constants, 4 * 262_144);
  // gate_proj: 45,088,768 values, 704,512 blocks, 2,752 second-level scales.
  assertEquals(quantizedBytes(11008 * 4096), { packed: 22_544_384, constants: 704_512 + 4 * 2752 });
});

Deno.test("estimate: 7B QLoRA keeps the block linears in NF4 and embeddings, LM head, norms in bf16", () => {
  const e = estimateMemory(C7, { mode: "qlora", seq: 64, batch: 1 });
  assertEquals(e.bytes.quantized_weights, 3_238_002_688); // 32 · (4 · 8,388,608 + 3 · 22,544,384)
  assertEquals(e.bytes.quant_constants, 102_768_640); // 32 · (4 · 266,240 + 3 · 715,520)
  const bits = (8 * (e.bytes.quantized_weights + e.bytes.quant_constants)) / LINEAR_7B;
  assertAlmostEquals(bits, 4.127, 1e-3);
  assertEquals(e.bytes.weights, 2 * (262_144_000 + 65 * 4096)); // 524,820,480
  assertEquals(e.bytes.adapters, 2 * ADAPTERS_7B);
  assertEquals(e.bytes.gradients, 2 * ADAPTERS_7B);
  assertEquals(e.bytes.optimizer_states, 12 * ADAPTERS_7B); // m, v and the f32 master
  assertEquals(e.trainable, ADAPTERS_7B);
  assertEquals(e.parameters, P7 + ADAPTERS_7B);
  assert(e.peak > 4.4e9 && e.peak < 4.5e9, `QLoRA 7B at 1x64: ${e.peak}`);
});

Deno.test("estimate: 7B full fine-tuning is 2 + 2 + 8 bytes per parameter, 2 + 2 + 12 with f32 masters", () => {
  const plain = estimateMemory(C7, { mode: "full", seq: 64, batch: 1, masterWeights: false });
  assertEquals(plain.bytes.weights, 2 * P7); // 13.48 GB: the seed's "14 GB"
  assertEquals(plain.bytes.gradients, 2 * P7);
  assertEquals(plain.bytes.optimizer_states, 8 * P7); // 53.9 GB, not the seed's 28 GB
  assertEquals(plain.perTrainable, { gradients: 2, optimizerStates: 8 });
  const mixed = estimateMemory(C7, { mode: "full", seq: 64, batch: 1 });
  assertEquals(mixed.bytes.optimizer_states, 12 * P7);
  const lora = estimateMemory(C7, { mode: "lora", seq: 64, batch: 1 });
  assertEquals(lora.bytes.weights, 2 * P7);
  assertEquals(lora.bytes.quantized_weights, 0);
  // f32 weights: 4-byte gradients, and no master copies.
  const f32 = estimateMemory(C7, { mode: "full", seq: 1, batch: 1, dtype: "f32" });
  assertEquals(f32.perTrainable, { gradients: 4, optimizerStates: 8 });
});

Deno.test("estimate: 7B activations per token from what a block keeps", () => {
  const e = estimateMemory(C7, { mode: "full", seq: 64, batch: 1 });
  // per block: 2·(6·4096 + 2·4096 + 3·11008) + 2 f32 rstd + 32 f32 lse = 131,720 bytes per token
  // tail: last hidden, final norm, logits (2·(2·4096 + 32000)) + rstd = 80,388; backward MLP: 74,240
  assertEquals(e.activationsPerToken, { saved: 32 * 131_720 + 80_388, transient: 74_240 });
  assertEquals(e.bytes.activations, 64 * (32 * 131_720 + 80_388 + 74_240));
  const ckpt = estimateMemory(C7, { mode: "full", seq: 64, batch: 1, checkpointing: true });
  assertEquals(ckpt.activationsPerToken.saved, 32 * 2 * 4096 + 131_720 + 80_388);
  const lora = estimateMemory(C7, { mode: "lora", seq: 64, batch: 1 });
  assertEquals(lora.activationsPerToken.saved - e.activationsPerToken.saved, 32 * 7 * 8 * 2); // h = x Aᵀ
  // Activations grow linearly with tokens, so the 6 GiB limit is a sequence length.
  const max = maxSequenceWithin(C7, { mode: "qlora", batch: 1 }, 6 * 2 ** 30);
  assert(estimateMemory(C7, { mode: "qlora", seq: max, batch: 1 }).peak <= 6 * 2 ** 30);
  assert(estimateMemory(C7, { mode: "qlora", seq: max + 1, batch: 1 }).peak > 6 * 2 ** 30);
  assertEquals(maxSequenceWithin(C7, { mode: "full", batch: 1 }, 6 * 2 ** 30), 0);
});

Deno.test("estimate: bad options are refused", () => {
  assertThrows(
    () => estimateMemory(C7, { mode: "half" as TrainMode, seq: 1, batch: 1 }),
    InvalidArgumentError,
  );
  assertThrows(() => estimateMemory(C7, { mode: "full", seq: 0, batch: 1 }), InvalidArgumentError);
});

Deno.test("estimate: matches the ledger of a small model in each mode (GQA, bf16)", () => {
  const device = getDevice();
  const config: LlamaConfig = {
    vocabSize: 64,
    dim: 64,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    hiddenDim: 160,
    maxSeq: 32,
    normEps: 1e-5,
    ropeTheta: 10000,
  };
  const seq = 16, batch = 2;
  const ids = new Int32Array(seq * batch).map((_, i) => (i * 5 + 1) % 64);
  for (const mode of ["full", "lora", "qlora"] as TrainMode[]) {
    const base = device.memory().totalCurrent;
    {
      using model = new LlamaModel(config, { mode, dtype: "bf16", rank: 4 });
      using opt = mode === "qlora" ? new PagedAdamW(model.trainables()) : new AdamW(model.trainables());
      using x = Tensor.from(ids, { shape: [batch, seq] });
      using y = Tensor.from(ids, { shape: [batch, seq] });
      device.resetPeak();
      model.forward(x, y);
      model.backward();
      opt.step();
      const snap = device.memory();
      const e = estimateMemory(config, { mode, seq, batch, rank: 4 });
      assertEquals(model.parameters, e.parameters);
      assertEquals(model.trainableParameters, e.trainable);
      for (const c of CATEGORIES) {
        if (c === "activations" || c === "workspace") continue;
        assertEquals(snap.peak[c], e.bytes[c], `${mode} ${c}`);
      }
      const act = snap.peak.activations;
      assert(
        Math.abs(act - e.bytes.activations) <= 0.1 * act,
        `${mode} activations ${act} vs ${e.bytes.activations}`,
      );
    }
    assertEquals(device.memory().totalCurrent, base);
  }
});
