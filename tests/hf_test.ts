// Hugging Face LLaMA checkpoints: a model directory loaded here computes what transformers computes from
// it. tests/data/hf/ holds tiny model directories (f32, bf16 sharded with tied embeddings, f16; grouped-
// query and multi-head attention) and the outputs of an independent float64 PyTorch LLaMA written from
// transformers' modeling_llama definitions (tests/hf_reference.py, run where python3-torch exists; its
// --check-transformers compares it with transformers' own LlamaForCausalLM in float64: 1.4e-15 apart).
import { assert, assertEquals, assertRejects, assertStringIncludes, assertThrows } from "@std/assert";
import {
  getDevice,
  LlamaModel,
  loadWeights,
  type LoRALinear,
  openModelDir,
  quantizeCheckpoint,
  readSafetensors,
  ROPE_LAYOUT,
  saveWeights,
  Tensor,
  writeSafetensors,
} from "../mod.ts";

const device = getDevice();
const DATA = new URL("./data/hf/", import.meta.url).pathname;
const CASES = ["gqa_untied_f32", "mha_tied_bf16_sharded", "gqa_f16"];
/** A small config for the tests of saved weights files. */
const SMALL = {
  vocabSize: 16,
  dim: 16,
  layers: 1,
  heads: 2,
  kvHeads: 1,
  hiddenDim: 32,
  maxSeq: 8,
  normEps: 1e-5,
  ropeTheta: 10000,
};

function maxRelError(a: Float32Array, b: Float32Array): number {
  assertEquals(a.length, b.length);
  let err = 0, scale = 0;
  for (let i = 0; i < a.length; i++) {
    err = Math.max(err, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return err / scale;
}

/**
 * The bf16 gradients' tolerance, from bf16's precision. bf16 keeps 8 significant bits, so each rounding of a
 * value to bf16 is off by at most u = 2^-8 of it. Counted along the longest path to a compared gradient
 * (layer 0's q_proj in a model of L blocks): forward, 11 roundings a block (RMSNorm, q, RoPE, attention, o,
 * residual, RMSNorm, gate, SwiGLU, down, residual); the head, 5 (final RMSNorm, logits, their gradient, the
 * head's and the RMSNorm's backward); backward, 14 a block (down, SwiGLU, gate, + up, RMSNorm, residual, o,
 * attention, RoPE, q, + k, + v, RMSNorm, residual), 9 of them in block 0 and then the weight gradient:
 * 25L + 1; and where the file's weights are f32 or f16, their rounding to bf16 at each of about 8L + 2
 * products on the path. The cases here (L = 3 from bf16, L = 2 from f32, L = 1 from f16) take 76, 69 and 36:
 * k = 80 covers them. All k errors aligned give k·u = 0.31 (the 0.3 this test allowed before), which
 * independent roundings do not reach: to first order (the models are well scaled, their layers' Jacobians
 * about 1) an entry's error is a sum of k roundings, each uniform in [-u, u] (standard deviation u/√3), so
 * σ = u·√(k/3) = 0.020 of the largest entry. The tolerance is 5σ = 0.10: a normal variable passes 5σ with
 * probability 6e-7, under 1e-2 for the at most 8,500 entries a case compares. Measured, the worst of the four
 * gradients on the CPU backend (the same every run, and the same gradients with QLORA_CPU_ISA=avx2): 0.024 on
 * these cases (0.022 on cuda-emu), 0.054 (2.7σ) over 33 models from tests/hf_reference.py, 11 seeds per case
 * (0.046 on cuda-emu for that one).
 */
const BF16_GRAD_TOLERANCE = 5 * 2 ** -8 * Math.sqrt(80 / 3);

async function reference(name: string) {
  const ref = await readSafetensors(`${DATA}${name}/reference.safetensors`);
  const get = (key: string) => ref.get(key)!;
  const f32 = (key: string) => new Float32Array(get(key).data.slice().buffer);
  const i32 = (key: string) => new Int32Array(get(key).data.slice().buffer);
  return {
    shape: get("tokens").info.shape,
    tokens: i32("tokens"),
    targets: i32("targets"),
    f32,
    keys: [...ref.keys()],
  };
}

for (const name of CASES) {
  for (const dtype of ["f32", "bf16"] as const) {
    Deno.test(`hf: ${name} computed in ${dtype} gives transformers' logits, loss and gradients`, async () => {
      const ref = await reference(name);
      using dir = await openModelDir(`${DATA}${name}`);
      using model = new LlamaModel(dir.hf.config, { mode: "full", dtype, weights: dir.weights, device });
      using x = Tensor.from(ref.tokens, { shape: ref.shape, device });
      using y = Tensor.from(ref.targets, { shape: ref.shape, device });
      const tol = dtype === "f32" ? 1e-5 : 3e-2;
      using logits = model.logits(x);
      const logitsError = maxRelError(logits.toFloat32(), ref.f32("logits"));
      const loss = model.forward(x, y);
      const lossError = Math.abs(loss - ref.f32("loss")[0]) / ref.f32("loss")[0];
      model.backward();
      const gradErrors: string[] = [];
      for (const key of ref.keys.filter((k) => k.startsWith("grad."))) {
        const grad = model.namedGradients().get(key.slice(5));
        assert(grad, `no gradient for ${key.slice(5)}`);
        const e = maxRelError(grad, ref.f32(key));
        gradErrors.push(`${key.slice(5)} ${e.toExponential(1)}`);
        assert(e < (dtype === "f32" ? tol * 10 : BF16_GRAD_TOLERANCE), `${key}: relative error ${e}`);
      }
      console.log(
        `hf ${name} ${dtype}: logits ${logitsError.toExponential(1)}, loss ${lossError.toExponential(1)}; ` +
          gradErrors.join(", "),
      );
      assert(logitsError < tol, `logits: relative error ${logitsError}`);
      assert(lossError < tol, `loss: relative error ${lossError}`);
    });
  }
}

/** A copy of a case's directory with one change, for the refusals below. */
async function variant(name: string, change: (dir: string) => Promise<void>): Promise<string> {
  const dir = await Deno.makeTempDir();
  for await (const e of Deno.readDir(`${DATA}${name}`)) {
    await Deno.copyFile(`${DATA}${name}/${e.name}`, `${dir}/${e.name}`);
  }
  await change(dir);
  return dir;
}

async function editConfig(dir: string, edit: (c: Record<string, unknown>) => void): Promise<void> {
  const c = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
  edit(c);
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(c));
}

Deno.test("hf: a wrong directory is refused by name, before any weight is read", async () => {
  const cases: [string, (dir: string) => Promise<void>, string][] = [
    [
      "rope_scaling",
      (d) => editConfig(d, (c) => c.rope_scaling = { rope_type: "llama3", factor: 8 }),
      'rope_scaling of type "llama3"',
    ],
    [
      "layers",
      (d) => editConfig(d, (c) => c.num_hidden_layers = 3),
      "model.layers.2.input_layernorm.weight is missing",
    ],
    [
      "extra",
      (d) => editConfig(d, (c) => c.num_hidden_layers = 1),
      "model.layers.1.input_layernorm.weight is not a weight",
    ],
    [
      "shape",
      (d) => editConfig(d, (c) => c.intermediate_size = 50),
      "has shape [48, 32], the config implies [50, 32]",
    ],
    ["tied", (d) => editConfig(d, (c) => c.tie_word_embeddings = true), "lm_head.weight is stored although"],
    ["bias", (d) => editConfig(d, (c) => c.attention_bias = true), "attention_bias: true"],
    ["arch", (d) => editConfig(d, (c) => c.model_type = "mistral"), 'model_type "mistral"'],
    ["no weights", (d) => Deno.remove(`${d}/model.safetensors`), "no model.safetensors"],
    ["bad json", (d) => Deno.writeTextFile(`${d}/config.json`, "{"), "Cannot parse"],
  ];
  for (const [what, change, message] of cases) {
    const dir = await variant("gqa_untied_f32", change);
    try {
      await assertRejects(() => openModelDir(dir), Error, message, what);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
});

Deno.test("hf: a shard the index does not list where it is, or a missing shard, is refused", async () => {
  const dir = await variant("mha_tied_bf16_sharded", async (d) => {
    const index = JSON.parse(await Deno.readTextFile(`${d}/model.safetensors.index.json`));
    index.weight_map["model.norm.weight"] = "model-00001-of-00002.safetensors";
    await Deno.writeTextFile(`${d}/model.safetensors.index.json`, JSON.stringify(index));
  });
  try {
    await assertRejects(() => openModelDir(dir), Error, "model.norm.weight is in");
    await Deno.remove(`${dir}/model-00002-of-00002.safetensors`);
    await assertRejects(() => openModelDir(dir), Error, "model-00002-of-00002.safetensors");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("hf: saveWeights records the half-split RoPE layout; a file of an earlier version reads as interleaved", async () => {
  const dir = await Deno.makeTempDir();
  try {
    using model = new LlamaModel(SMALL, { seed: 3, device });
    await saveWeights(model, `${dir}/new.safetensors`);
    assertEquals((await loadWeights(`${dir}/new.safetensors`)).ropeLayout, ROPE_LAYOUT);
    await writeSafetensors(`${dir}/old.safetensors`, [], { config: JSON.stringify(SMALL) });
    assertEquals((await loadWeights(`${dir}/old.safetensors`)).ropeLayout, "interleaved");
    await writeSafetensors(`${dir}/foreign.safetensors`, []);
    assertEquals((await loadWeights(`${dir}/foreign.safetensors`)).ropeLayout, undefined);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("hf: a model directory quantized by `deno task quantize` (bnb-4bit layout) loads; QLoRA gets the same codes", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const src = `${DATA}gqa_untied_f32`;
    await Deno.copyFile(`${src}/config.json`, `${tmp}/config.json`);
    await quantizeCheckpoint(device, `${src}/model.safetensors`, `${tmp}/model.safetensors`, {
      skip: /embed_tokens|lm_head/, // as QLoRA: the embeddings and the LM head stay in 16 bits
    });
    using plain = await openModelDir(src);
    using four = await openModelDir(tmp);
    assert(four.bytes < plain.bytes, `${four.bytes} bytes of 4-bit weights vs ${plain.bytes}`); // (tiny: maps dominate)
    const ref = await reference("gqa_untied_f32");
    using x = Tensor.from(ref.tokens, { shape: ref.shape, device });
    using a = new LlamaModel(plain.hf.config, {
      mode: "qlora",
      dtype: "f32",
      rank: 4,
      weights: plain.weights,
      device,
    });
    using b = new LlamaModel(four.hf.config, {
      mode: "qlora",
      dtype: "f32",
      rank: 4,
      weights: four.weights,
      device,
    });
    for (let i = 0; i < plain.hf.config.layers; i++) {
      for (const name of ["q_proj", "down_proj"] as const) {
        const qa = (a.block(i)[name] as LoRALinear).quantized!,
          qb = (b.block(i)[name] as LoRALinear).quantized!;
        assertEquals(qa.packed.toArray(), qb.packed.toArray(), `layer ${i} ${name}: the same 4-bit codes`);
      }
    }
    using la = a.logits(x), lb = b.logits(x);
    const e = maxRelError(lb.toFloat32(), la.toFloat32());
    console.log(`hf 4-bit directory: logits within ${e.toExponential(1)} of QLoRA from the f32 file`);
    assert(e < 1e-2, `logits: ${e}`);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("hf: a weight missing from a weights file is an error naming it, not a random weight", async () => {
  const path = await Deno.makeTempFile({ suffix: ".safetensors" });
  try {
    await writeSafetensors(path, [], { config: JSON.stringify(SMALL), rope: ROPE_LAYOUT });
    const loaded = await loadWeights(path);
    assertThrows(
      () => new LlamaModel(SMALL, { weights: loaded.weights, device }),
      Error,
      "has no such weight",
    );
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("hf: the reference was checked against transformers' LlamaForCausalLM for every case (recorded)", async () => {
  // tests/data/hf_transformers_check.txt is the output of `python tests/hf_reference.py --check-transformers`
  // (transformers is not installable in CI): a case added without that check, or a check that found the
  // float64 reference apart from transformers in float64, fails here.
  const record = await Deno.readTextFile(new URL("./data/hf_transformers_check.txt", import.meta.url));
  assertStringIncludes(record, "transformers ");
  for (const name of CASES) {
    const line = record.split("\n").find((l) => l.startsWith(`${name}, float64 throughout:`));
    assert(line, `no transformers check recorded for ${name}`);
    const apart = Number(line.match(/forward\(\) within ([0-9.e+-]+)/)?.[1]);
    assert(apart <= 1e-12, `${name}: the float64 reference was ${apart} apart from transformers`);
  }
});
