// GGUF export without llama.cpp: the block quantizers against the formats' definitions, the container's
// bytes against the specification, the reader's refusals, the RoPE permutation against both RoPE layouts,
// the tokenizer metadata, and exported models read back.
import { assert, assertEquals, assertGreater, assertLess, assertRejects, assertThrows } from "@std/assert";
import {
  bf16ToF32,
  decodeTensor,
  dequantizeIQ4_NL,
  dequantizeQ4_0,
  dequantizeQ8_0,
  encodeTensor,
  expectedWeights,
  exportGGUF,
  f16ToF32,
  f32ToBf16,
  getDevice,
  GGML_TYPES,
  type GGMLType,
  ggufArray,
  ggufPlain,
  GGUFReader,
  ggufTensorName,
  ggufTokenizerFromFiles,
  ggufTokenizerMetadata,
  ggufValue,
  GGUFWriter,
  InvalidArgumentError,
  IQ4_NL_VALUES,
  LlamaModel,
  LoRALinear,
  permuteRope,
  quantizeIQ4_NL,
  quantizeQ4_0,
  quantizeQ8_0,
  unpermuteRope,
} from "../mod.ts";
import { Xorshift128 } from "../lib/base/random.ts";
import { CONFIG, randomWeights, tinyTokenizerWithBytes, TOKENIZER } from "./_gguf_model.ts";

const cpu = getDevice("cpu");

function gaussian(n: number, seed: number, std = 1): Float32Array {
  const rng = new Xorshift128(seed);
  return Float32Array.from(
    { length: n },
    () => std * Math.sqrt(-2 * Math.log(1 - rng.nextFloat())) * Math.cos(2 * Math.PI * rng.nextFloat()),
  );
}

const scaleOf = (bytes: Uint8Array, block: number, size: number) =>
  f16ToF32(new Uint16Array([bytes[block * size] | (bytes[block * size + 1] << 8)]))[0];
const rms = (a: Float32Array, b: Float32Array) =>
  Math.sqrt(a.reduce((s, x, i) => s + (x - b[i]) ** 2, 0) / a.length);

async function withTemp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

// ---------------------------------------------------------------------------------------------------------
// Block quantizers
// ---------------------------------------------------------------------------------------------------------

Deno.test("Q8_0: an f16 scale then 32 int8; multiples of the scale round-trip exactly", () => {
  const d = 2 ** -7; // exact in f16: 0x2000
  const k = Array.from({ length: 32 }, (_, j) => j === 5 ? -127 : ((j * 37) % 255) - 127);
  const x = Float32Array.from(k, (q) => q * d);
  const bytes = quantizeQ8_0(x);
  assertEquals([...bytes.subarray(0, 2)], [0x00, 0x20]);
  assertEquals([...new Int8Array(bytes.buffer, 2, 32)], k);
  assertEquals(dequantizeQ8_0(bytes), x);
});

Deno.test("Q8_0: every element within half a step (plus the f16 rounding of the step) on Gaussian data", () => {
  const x = gaussian(32 * 64, 1, 0.02);
  const y = dequantizeQ8_0(quantizeQ8_0(x));
  for (let b = 0; b < 64; b++) {
    const block = x.subarray(b * 32, b * 32 + 32);
    const d = Math.max(...block.map(Math.abs)) / 127;
    for (let j = 0; j < 32; j++) {
      assertLess(Math.abs(block[j] - y[b * 32 + j]), d * (0.5 + 127 * 2 ** -11) + 1e-12);
    }
  }
});

Deno.test("Q4_0: low nibbles hold elements 0..15, high nibbles 16..31; the largest magnitude is code 0", () => {
  // Codes j for elements 0..15 and 15 - j for 16..31, with d = -0.25: element 0 (code 0) is +2, the
  // largest magnitude, so the quantizer picks d = 2 / -8 = -0.25 itself.
  const codes = [...Array.from({ length: 16 }, (_, j) => j), ...Array.from({ length: 16 }, (_, j) => 15 - j)];
  const x = Float32Array.from(codes, (q) => (q - 8) * -0.25);
  const bytes = quantizeQ4_0(x);
  assertEquals([...bytes.subarray(0, 2)], [0x00, 0xb4]); // -0.25 in f16
  assertEquals([...bytes.subarray(2)], Array.from({ length: 16 }, (_, j) => j | ((15 - j) << 4)));
  assertEquals(dequantizeQ4_0(bytes), x);
  // A negative extreme gives a positive scale: -8 · 0.5 is code 0, 7 · 0.5 code 15.
  const y = Float32Array.from({ length: 32 }, (_, j) => ((j % 16) - 8) * 0.5);
  assertEquals(scaleOf(quantizeQ4_0(y), 0, 18), 0.5);
  assertEquals(dequantizeQ4_0(quantizeQ4_0(y)), y);
});

Deno.test("Q4_0: within half a step, a whole step only for the top code (which the code 15 clamps)", () => {
  const x = gaussian(32 * 64, 2, 0.02);
  const bytes = quantizeQ4_0(x);
  const y = dequantizeQ4_0(bytes);
  for (let b = 0; b < 64; b++) {
    const d = scaleOf(bytes, b, 18);
    for (let j = 0; j < 32; j++) {
      const v = x[b * 32 + j], err = Math.abs(v - y[b * 32 + j]);
      const slack = Math.abs(d) * 8 * 2 ** -11 + 1e-12; // the f16 rounding of d, times at most 8 steps
      assertLess(err, (v / d > 7.5 ? Math.abs(d) : Math.abs(d) / 2) + slack);
    }
  }
});

Deno.test("IQ4_NL: ggml's 16 values, increasing; a code indexes them, same nibble layout as Q4_0", () => {
  assertEquals(IQ4_NL_VALUES, [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]);
  const block = new Uint8Array(18);
  block.set([0x00, 0x3c]); // d = 1
  for (let j = 0; j < 16; j++) block[2 + j] = j | ((15 - j) << 4);
  const y = dequantizeIQ4_NL(block);
  assertEquals([...y.subarray(0, 16)], IQ4_NL_VALUES);
  assertEquals([...y.subarray(16)], [...IQ4_NL_VALUES].reverse());
});

Deno.test("IQ4_NL: a block of table values times a power of two round-trips exactly, codes as given", () => {
  const rng = new Xorshift128(3);
  const codes = Array.from({ length: 32 }, (_, j) => j === 7 ? 0 : rng.nextInt(16)); // -127 present
  const x = Float32Array.from(codes, (q) => IQ4_NL_VALUES[q] / 64);
  const bytes = quantizeIQ4_NL(x);
  assertEquals(scaleOf(bytes, 0, 18), 1 / 64);
  assertEquals([...bytes.subarray(2)], Array.from({ length: 16 }, (_, j) => codes[j] | (codes[j + 16] << 4)));
  assertEquals(dequantizeIQ4_NL(bytes), x);
});

Deno.test("IQ4_NL: the searched scale never does worse than the plain max/127 one; beats Q4_0 on Gaussian data", () => {
  const x = gaussian(32 * 256, 4, 0.02);
  const bytes = quantizeIQ4_NL(x);
  const y = dequantizeIQ4_NL(bytes);
  const nearest = (v: number) =>
    IQ4_NL_VALUES.reduce((best, t) => Math.abs(v - t) < Math.abs(v - best) ? t : best, IQ4_NL_VALUES[0]);
  for (let b = 0; b < 256; b++) {
    const block = x.subarray(b * 32, b * 32 + 32);
    let max = 0;
    for (const v of block) if (Math.abs(v) > Math.abs(max)) max = v;
    const d0 = max / 127; // the starting scale: the largest element becomes 127 (nearest: 113)
    let plain = 0, searched = 0;
    for (let j = 0; j < 32; j++) {
      const w = block[j] ** 2; // llama.cpp's weights without an importance matrix
      plain += w * (block[j] - d0 * nearest(block[j] / d0)) ** 2;
      searched += w * (block[j] - y[b * 32 + j]) ** 2;
    }
    assert(searched <= plain * 1.001 + 1e-20, `block ${b}: ${searched} > ${plain}`);
  }
  const q4 = dequantizeQ4_0(quantizeQ4_0(x));
  assertLess(rms(x, y), 0.9 * rms(x, q4), "the non-linear table fits bell-shaped data better");
});

Deno.test("quantizers refuse partial blocks; float types round to nearest even", () => {
  assertThrows(() => quantizeQ4_0(new Float32Array(40)), InvalidArgumentError, "blocks of 32");
  assertThrows(() => decodeTensor("Q8_0", new Uint8Array(35)), InvalidArgumentError, "whole");
  // 1 + 2^-8 is halfway between two bf16 values: to the even one, 1; 1 + 3·2^-8 rounds up to 1 + 2^-6.
  const x = new Float32Array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5]);
  assertEquals(decodeTensor("BF16", encodeTensor("BF16", x)), new Float32Array([1, 1 + 2 ** -6, -2.5]));
  assertEquals(decodeTensor("F16", encodeTensor("F16", new Float32Array([1 + 2 ** -11])))[0], 1);
  assertEquals(decodeTensor("F32", encodeTensor("F32", x)), x);
});

// ---------------------------------------------------------------------------------------------------------
// The container
// ---------------------------------------------------------------------------------------------------------

Deno.test("GGUF bytes as the specification lays them out: header, metadata, tensor info, padding, data", async () => {
  await withTemp(async (dir) => {
    const path = `${dir}/a.gguf`;
    const w = await GGUFWriter.create(path, new Map([["a", ggufValue("u32", 7)]]), [
      { name: "t", type: "F32", shape: [2] },
    ]);
    await w.write("t", new Uint8Array(new Float32Array([1, 2]).buffer));
    await w.close();
    const e = new Uint8Array(128), v = new DataView(e.buffer);
    e.set([0x47, 0x47, 0x55, 0x46]); // "GGUF"
    v.setUint32(4, 3, true); // version
    v.setBigUint64(8, 1n, true); // tensors
    v.setBigUint64(16, 1n, true); // metadata
    v.setBigUint64(24, 1n, true), e[32] = 0x61, v.setUint32(33, 4, true), v.setUint32(37, 7, true); // "a": u32 7
    v.setBigUint64(41, 1n, true), e[49] = 0x74; // "t"
    v.setUint32(50, 1, true),
      v.setBigUint64(54, 2n, true),
      v.setUint32(62, 0, true),
      v.setBigUint64(66, 0n, true);
    // 74 bytes of header, zeros to 96 (alignment 32), the data, zeros to 128
    v.setFloat32(96, 1, true), v.setFloat32(100, 2, true);
    assertEquals(await Deno.readFile(path), e);
  });
});

Deno.test("GGUF round trip: every value type, every tensor type, 64-byte alignment", async () => {
  await withTemp(async (dir) => {
    const metadata = new Map([
      ["u8", ggufValue("u8", 255)],
      ["i8", ggufValue("i8", -128)],
      ["u16", ggufValue("u16", 65535)],
      ["i16", ggufValue("i16", -32768)],
      ["u32", ggufValue("u32", 4294967295)],
      ["i32", ggufValue("i32", -2147483648)],
      ["f32", ggufValue("f32", 0.5)],
      ["f64", ggufValue("f64", Math.PI)],
      ["u64", ggufValue("u64", 2n ** 64n - 1n)],
      ["i64", ggufValue("i64", -(2n ** 63n))],
      ["bool", ggufValue("bool", true)],
      ["string", ggufValue("string", "Zürich ☃")],
      ["strings", ggufArray("string", ["", "<s>", "▁hello"])],
      ["floats", ggufArray("f32", [-1000, 0.25])],
      ["empty", ggufArray("i32", [])],
    ]);
    const types: GGMLType[] = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "IQ4_NL"];
    const tensors = types.map((type) => ({ name: `t.${type}`, type, shape: [3, 64] }));
    const values = types.map((_, i) => gaussian(192, 10 + i));
    const path = `${dir}/all.gguf`;
    const writer = await GGUFWriter.create(path, metadata, tensors, { alignment: 64 });
    for (const [i, t] of tensors.entries()) {
      const bytes = encodeTensor(t.type, values[i]);
      await writer.write(t.name, bytes.subarray(0, 7)); // in chunks
      await writer.write(t.name, bytes.subarray(7));
    }
    await writer.close();
    using r = await GGUFReader.open(path);
    assertEquals(r.version, 3);
    assertEquals(r.alignment, 64);
    assertEquals(r.metadata.get("general.alignment"), ggufValue("u32", 64));
    assertEquals([...r.metadata].filter(([k]) => k !== "general.alignment"), [...metadata]);
    assertEquals(r.fileSize, (await Deno.stat(path)).size);
    for (const [i, t] of r.tensors.entries()) {
      assertEquals([t.name, t.type, t.shape], [tensors[i].name, tensors[i].type, [3, 64]]);
      assertEquals(t.offset % 64, 0);
      assertEquals(await r.read(t.name), decodeTensor(t.type, encodeTensor(t.type, values[i])));
    }
    assertEquals(r.tensors.map((t) => t.byteLength), [768, 384, 384, 204, 108, 108]);
  });
});

Deno.test("GGUF writer: tensors in order and whole, or nothing replaces the target", async () => {
  await withTemp(async (dir) => {
    const path = `${dir}/x.gguf`;
    await Deno.writeTextFile(path, "old");
    const entries = [{ name: "a", type: "F32" as const, shape: [1] }, {
      name: "b",
      type: "F32" as const,
      shape: [1],
    }];
    const w = await GGUFWriter.create(path, new Map(), entries);
    await assertRejects(() => w.write("b", new Uint8Array(4)), InvalidArgumentError, "expected bytes of a");
    await assertRejects(() => w.write("a", new Uint8Array(8)), InvalidArgumentError, "holds 4");
    await w.write("a", new Uint8Array(4));
    await assertRejects(() => w.close(), InvalidArgumentError, "tensor b got 0 of 4 bytes");
    assertEquals(await Deno.readTextFile(path), "old");
    assertEquals([...Deno.readDirSync(dir)].length, 1);
    await assertRejects(
      () => GGUFWriter.create(path, new Map(), [{ name: "q", type: "Q4_0", shape: [2, 48] }]),
      InvalidArgumentError,
      "multiple of 32",
    );
    assertThrows(() => ggufValue("u32", -1), InvalidArgumentError);
    assertThrows(() => ggufArray("string", ["a", 1]), InvalidArgumentError, "item 1");
  });
});

Deno.test("GGUF reader refuses what is not a sound GGUF file, naming the problem", async () => {
  await withTemp(async (dir) => {
    const good = `${dir}/good.gguf`;
    const w = await GGUFWriter.create(good, new Map([["k", ggufValue("string", "v")]]), [
      { name: "t", type: "Q8_0", shape: [2, 32] },
    ]);
    await w.write("t", new Uint8Array(68));
    await w.close();
    const bytes = await Deno.readFile(good);
    const bad = async (edit: (b: Uint8Array) => Uint8Array, message: string) => {
      const path = `${dir}/bad.gguf`;
      await Deno.writeFile(path, edit(bytes.slice()));
      await assertRejects(() => GGUFReader.open(path), InvalidArgumentError, message);
    };
    await bad((b) => (b[0] = 0x46, b), "no GGUF magic");
    await bad((b) => (b[4] = 1, b), "version 1");
    await bad((b) => b.subarray(0, 40), "past the end of the file");
    await bad((b) => b.subarray(0, b.length - 40), "ends past the end of the file");
    await bad((b) => (new DataView(b.buffer).setBigUint64(24, 1n << 40n, true), b), "larger than the file");
    // The tensor's offset: after the header (24), "k": string "v" (8 + 1 + 4 + 8 + 1), and the name, the
    // dimension count, two dimensions and the type of "t" (8 + 1 + 4 + 16 + 4).
    const offsetAt = 24 + 22 + 33;
    await bad(
      (b) => (new DataView(b.buffer).setBigUint64(offsetAt, 8n, true), b),
      "offset 8, not a multiple of 32",
    );
  });
});

// ---------------------------------------------------------------------------------------------------------
// Names and RoPE
// ---------------------------------------------------------------------------------------------------------

Deno.test("GGUF names of every LLaMA weight (llama.cpp's LLM_TENSOR_NAMES for the llama architecture)", () => {
  const c = { ...CONFIG, layers: 2 };
  const names = [...expectedWeights(c, false).keys()].map(ggufTensorName);
  const block = [
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
  ];
  assertEquals(
    new Set(names),
    new Set([
      "token_embd.weight",
      ...[0, 1].flatMap((i) => block.map((b) => `blk.${i}.${b}.weight`)),
      "output_norm.weight",
      "output.weight",
    ]),
  );
  assertThrows(() => ggufTensorName("model.layers.0.self_attn.rotary_emb.inv_freq"), InvalidArgumentError);
});

/** transformers' RoPE: element i turns with element i + d/2. */
function ropeHalves(v: Float32Array, pos: number, base: number): Float32Array {
  const d = v.length, h = d / 2, out = new Float32Array(d);
  for (let i = 0; i < h; i++) {
    const t = pos * base ** (-2 * i / d), c = Math.cos(t), s = Math.sin(t);
    out[i] = v[i] * c - v[i + h] * s;
    out[i + h] = v[i + h] * c + v[i] * s;
  }
  return out;
}

/** llama.cpp's RoPE for the llama architecture: element 2i turns with 2i + 1. */
function ropePairs(v: Float32Array, pos: number, base: number): Float32Array {
  const d = v.length, out = new Float32Array(d);
  for (let i = 0; i < d / 2; i++) {
    const t = pos * base ** (-2 * i / d), c = Math.cos(t), s = Math.sin(t);
    out[2 * i] = v[2 * i] * c - v[2 * i + 1] * s;
    out[2 * i + 1] = v[2 * i + 1] * c + v[2 * i] * s;
  }
  return out;
}

Deno.test("the q/k permutation makes llama.cpp's RoPE give transformers' attention scores (and only it)", () => {
  const heads = 4, kvHeads = 2, hd = 16, dim = 32;
  const wq = gaussian(heads * hd * dim, 5), wk = gaussian(kvHeads * hd * dim, 6);
  const x = gaussian(dim, 7), y = gaussian(dim, 8);
  const matvec = (w: Float32Array, v: Float32Array) =>
    Float32Array.from(
      { length: w.length / v.length },
      (_, r) => v.reduce((s, a, j) => s + a * w[r * v.length + j], 0),
    );
  const scores = (q: Float32Array, k: Float32Array, rope: typeof ropeHalves) =>
    Array.from({ length: heads }, (_, h) => {
      const g = Math.floor(h / (heads / kvHeads));
      const qh = rope(q.slice(h * hd, (h + 1) * hd), 5, 10000),
        kh = rope(k.slice(g * hd, (g + 1) * hd), 2, 10000);
      return qh.reduce((s, a, i) => s + a * kh[i], 0);
    });
  const hf = scores(matvec(wq, x), matvec(wk, y), ropeHalves);
  const gguf = scores(
    matvec(permuteRope(wq, heads, dim), x),
    matvec(permuteRope(wk, kvHeads, dim), y),
    ropePairs,
  );
  hf.forEach((s, h) => assertLess(Math.abs(s - gguf[h]), 1e-4 * (1 + Math.abs(s))));
  const unpermuted = scores(matvec(wq, x), matvec(wk, y), ropePairs);
  assert(hf.some((s, h) => Math.abs(s - unpermuted[h]) > 0.1), "without the permutation the scores differ");
  assertEquals(unpermuteRope(permuteRope(wq, heads, dim), heads, dim), wq);
  assertThrows(() => permuteRope(new Float32Array(6), 2, 1), InvalidArgumentError, "even");
});

// ---------------------------------------------------------------------------------------------------------
// Tokenizer metadata
// ---------------------------------------------------------------------------------------------------------

Deno.test("tokenizer metadata of the tiny tokenizer: padded to vocab_size 64, types, scores from merge ranks", async () => {
  const m = await ggufTokenizerMetadata(TOKENIZER, { allowMissingByteTokens: true });
  const tokens = ggufPlain(m.get("tokenizer.ggml.tokens")) as string[];
  const types = ggufPlain(m.get("tokenizer.ggml.token_type")) as number[];
  const scores = ggufPlain(m.get("tokenizer.ggml.scores")) as number[];
  const tj = JSON.parse(await Deno.readTextFile(`${TOKENIZER}/tokenizer.json`));
  assertEquals(tokens.length, 64);
  for (const [text, id] of Object.entries(tj.model.vocab as Record<string, number>)) {
    assertEquals(tokens[id], text);
  }
  assertEquals(tokens.slice(29), Array.from({ length: 35 }, (_, i) => `[PAD${29 + i}]`));
  assertEquals(types.slice(0, 8), [2, 3, 3, 3, 6, 6, 6, 1]); // <unk> UNKNOWN, specials CONTROL, <0x..> BYTE, ▁
  assertEquals(new Set(types.slice(29)), new Set([5])); // UNUSED
  const score = (t: string) => scores[tokens.indexOf(t)];
  // merges: "l l" (rank 0) ... "▁hell o" (rank 4) ... "▁ ▁" (rank 10)
  assertEquals([score("ll"), score("▁hello"), score("▁▁"), score("<s>"), score("[PAD40]")], [
    0,
    -4,
    -10,
    -1000,
    -1000,
  ]);
  assertEquals(
    ["bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"].map((k) =>
      ggufPlain(m.get(`tokenizer.ggml.${k}`))
    ),
    [1, 2, 0, 3],
  );
  assertEquals(
    ["add_bos_token", "add_eos_token", "add_space_prefix"].map((k) =>
      ggufPlain(m.get(`tokenizer.ggml.${k}`))
    ),
    [true, false, true],
  );
  assertEquals(ggufPlain(m.get("tokenizer.ggml.model")), "llama");
  assert(String(ggufPlain(m.get("tokenizer.chat_template"))).startsWith("{% for message"));
});

Deno.test("tokenizer metadata refuses what llama.cpp's llama tokenizer cannot reproduce", async () => {
  await assertRejects(
    () => ggufTokenizerMetadata(TOKENIZER),
    InvalidArgumentError,
    "253 of the 256 byte tokens",
  );
  const full = await tinyTokenizerWithBytes();
  const m = ggufTokenizerFromFiles({ tokenizer: full, config: { vocab_size: 320, eos_token_id: 2 } });
  assertEquals((ggufPlain(m.get("tokenizer.ggml.tokens")) as string[]).length, 320);
  assertThrows(
    () => ggufTokenizerFromFiles({ tokenizer: full, config: { eos_token_id: 2 } }, { vocabSize: 100 }),
    InvalidArgumentError,
    "282 ids, more than the model's 100",
  );
  const model = full.model as Record<string, unknown>;
  assertThrows(
    () =>
      ggufTokenizerFromFiles({
        tokenizer: { ...full, model: { ...model, byte_fallback: false } },
        config: { eos_token_id: 2 },
      }),
    InvalidArgumentError,
    "byte-level BPE",
  );
});

// ---------------------------------------------------------------------------------------------------------
// Models exported and read back
// ---------------------------------------------------------------------------------------------------------

const SMALL = { ...CONFIG, vocabSize: 64, layers: 2, hiddenDim: 96 };

/** Every weight of a file by Hugging Face name, q/k un-permuted. */
async function readBack(path: string, c = SMALL): Promise<Map<string, Float32Array>> {
  using r = await GGUFReader.open(path);
  const out = new Map<string, Float32Array>();
  for (const [hf, shape] of expectedWeights(c, false)) {
    const t = r.info(ggufTensorName(hf));
    assertEquals(t.shape, shape, hf);
    let v = await r.read(t.name);
    if (hf.endsWith("q_proj.weight")) v = unpermuteRope(v, c.heads, c.dim);
    if (hf.endsWith("k_proj.weight")) v = unpermuteRope(v, c.kvHeads, c.dim);
    out.set(hf, v);
  }
  return out;
}

function setAdapters(model: LlamaModel, seed: number): void {
  for (let i = 0; i < model.config.layers; i++) {
    for (const l of Object.values(model.block(i))) {
      if (l instanceof LoRALinear) l.loraB.copyFrom(gaussian(l.loraB.numel, seed++, 0.05));
    }
  }
}

Deno.test("export BF16 of a LoRA model: the merged weights (W + s·B·A), names, shapes, metadata; unmerged after", async () => {
  await withTemp(async (dir) => {
    using model = new LlamaModel(SMALL, {
      mode: "lora",
      rank: 4,
      alpha: 8,
      weights: randomWeights(1, 0.1),
      device: cpu,
    });
    setAdapters(model, 100);
    model.block(1).v_proj instanceof LoRALinear && (model.block(1).v_proj as LoRALinear).merge();
    const base = model.namedWeights(); // block 1's v_proj merged already
    const report = await exportGGUF(model, `${dir}/m.gguf`, { name: "small" });
    assertEquals(report.tensorsPerType, { BF16: 16, F32: 5 });
    assertEquals(report.bytes, (await Deno.stat(`${dir}/m.gguf`)).size);
    const merged = Object.values(model.block(0)).map((l) => (l as LoRALinear).merged);
    assertEquals(
      merged,
      [false, false, false, false, false, false, false],
      "what the export merged it unmerged",
    );
    assert((model.block(1).v_proj as LoRALinear).merged, "what was merged stays merged");
    const back = await readBack(`${dir}/m.gguf`);
    for (const [name, { shape, values }] of base) {
      const m = /layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.weight/.exec(name);
      let expected = values;
      if (m && !(m[1] === "1" && m[3] === "v_proj")) {
        // W + (alpha / rank) · B A, in f64 here, then rounded to bf16 as the file stores it
        const l = model.block(Number(m[1]))[m[3] as "q_proj"] as LoRALinear;
        const a = l.loraA.toFloat32(), b = l.loraB.toFloat32(), [rows, cols] = shape, r = l.rank;
        expected = Float32Array.from(values, (w, k) => {
          const i = Math.floor(k / cols), j = k % cols;
          let s = 0;
          for (let t = 0; t < r; t++) s += b[i * r + t] * a[t * cols + j];
          return w + 2 * s;
        });
        assertGreater(rms(expected, values), 1e-3, `${name}: the adapter moves it`);
        void rows;
      }
      const got = back.get(name)!,
        ulp = (x: number) => 2 ** (Math.floor(Math.log2(Math.abs(x) || 1e-30)) - 7);
      const bad = [...got].findIndex((g, k) => Math.abs(g - expected[k]) > ulp(expected[k]) / 2 + 1e-7 // and the f32 rounding of the merge's sum
      );
      assertEquals(bad, -1, `${name}[${bad}]: ${got[bad]} vs ${expected[bad]}`);
    }
    using r = await GGUFReader.open(`${dir}/m.gguf`);
    const v = (k: string) => r.value(k);
    assertEquals(
      [
        v("general.architecture"),
        v("general.name"),
        v("general.file_type"),
        v("general.alignment"),
        v("general.quantization_version"),
      ],
      ["llama", "small", 32, 32, undefined],
    );
    assertEquals(
      [
        "context_length",
        "embedding_length",
        "block_count",
        "feed_forward_length",
        "rope.dimension_count",
        "attention.head_count",
        "attention.head_count_kv",
        "vocab_size",
      ].map((k) => v(`llama.${k}`)),
      [64, 64, 2, 96, 16, 4, 2, 64],
    );
    assertEquals([v("llama.attention.layer_norm_rms_epsilon"), v("llama.rope.freq_base")], [
      Math.fround(1e-5),
      10000,
    ]);
  });
});

Deno.test("export of a QLoRA model: exactly the weights model.merge() gives, rounded to bf16", async () => {
  await withTemp(async (dir) => {
    using model = new LlamaModel(SMALL, {
      mode: "qlora",
      rank: 4,
      weights: randomWeights(2, 0.1),
      device: cpu,
    });
    setAdapters(model, 200);
    const unmerged = model.namedWeights();
    await exportGGUF(model, `${dir}/q.gguf`);
    model.merge();
    const merged = model.namedWeights();
    model.unmerge();
    const back = await readBack(`${dir}/q.gguf`);
    for (const [name, { shape, values }] of merged) {
      assertEquals(back.get(name), shape.length === 1 ? values : bf16ToF32(f32ToBf16(values)), name); // norms F32
      if (/_proj/.test(name)) assertGreater(rms(values, unmerged.get(name)!.values), 1e-3, name);
    }
  });
});

Deno.test("export Q8_0, Q4_0, IQ4_NL: norms F32, optional BF16 embeddings, values within each format's error", async () => {
  await withTemp(async (dir) => {
    using model = new LlamaModel(SMALL, { mode: "full", weights: randomWeights(3, 0.1), device: cpu });
    const weights = model.namedWeights();
    for (
      const [type, blocks, bpw] of [["q8_0", "Q8_0", 8.5], ["q4_0", "Q4_0", 4.5], [
        "iq4_nl",
        "IQ4_NL",
        4.5,
      ]] as const
    ) {
      const path = `${dir}/${type}.gguf`;
      const report = await exportGGUF(model, path, { type, keepEmbeddingsBf16: type === "q4_0" });
      const outer: Record<string, number> = type === "q4_0" ? { BF16: 2, [blocks]: 14 } : { [blocks]: 16 };
      assertEquals(report.tensorsPerType, { ...outer, F32: 5 });
      using r = await GGUFReader.open(path);
      assertEquals([r.value("general.file_type"), r.value("general.quantization_version")], [
        { q8_0: 7, q4_0: 2, iq4_nl: 25 }[type],
        2,
      ]);
      assertEquals(
        r.info("blk.0.ffn_down.weight").byteLength,
        (64 * 96 / 32) * GGML_TYPES[blocks].blockBytes,
      );
      const matrixBits = (8 * r.info("blk.0.attn_q.weight").byteLength) / (64 * 64);
      assertEquals(matrixBits, bpw);
      const back = await readBack(path);
      for (const [name, { shape, values }] of weights) {
        const got = back.get(name)!;
        if (shape.length === 1) {
          assertEquals(got, values, name); // F32, exact
          continue;
        }
        // The error of the format: at most a step (Q4_0's clamped top code), 12 of IQ4_NL's (half its widest
        // gap, 24) or, beyond its table, what the searched scale leaves; Q8_0 half a step.
        const rel = rms(got, values) / rms(values, new Float32Array(values.length));
        assertLess(rel, type === "q8_0" ? 0.01 : 0.15, `${type} ${name}: relative RMS error ${rel}`);
      }
    }
  });
});

Deno.test("export: rows that are not whole blocks stay BF16 and are reported", async () => {
  await withTemp(async (dir) => {
    const c = { ...SMALL, dim: 48, heads: 4, kvHeads: 2, hiddenDim: 64 };
    using model = new LlamaModel(c, { mode: "full", weights: randomWeights(4, 0.1), device: cpu });
    const report = await exportGGUF(model, `${dir}/f.gguf`, { type: "q4_0" });
    // [*, 48] rows are 1.5 blocks: all but ffn_down ([48, 64]) fall back
    assertEquals(report.tensorsPerType, { BF16: 14, Q4_0: 2, F32: 5 });
    assertEquals(report.fallbacks.length, 14);
    assert(
      report.fallbacks.includes("token_embd.weight") && !report.fallbacks.includes("blk.0.ffn_down.weight"),
    );
  });
});

Deno.test("export refuses a metadata key of the model's and leaves no file", async () => {
  await withTemp(async (dir) => {
    using model = new LlamaModel(SMALL, { mode: "full", device: cpu });
    await assertRejects(
      () =>
        exportGGUF(model, `${dir}/x.gguf`, {
          metadata: new Map([["llama.block_count", ggufValue("u32", 9)]]),
        }),
      InvalidArgumentError,
      "llama.block_count",
    );
    assertEquals([...Deno.readDirSync(dir)], []);
  });
});
