/**
 * The models of `bench/peer_llama_cpp.ts`: a LLaMA of LLaMA-2-7B's width with a few blocks (synthetic
 * bf16 weights from a seed), ours in bf16 (LoRA, merged) and QLoRA (NF4 + double quantization), and the
 * same weights written by this library's GGUF writer as BF16, Q4_0 and IQ4_NL for llama.cpp, the token
 * embedding and the LM head kept BF16 in every file. The files are cached (a 4-block model is ~2.1 GB at
 * BF16, ~1 GB at 4 bits; IQ4_NL's scale search takes minutes): a file is reused when its header names
 * the same shape, seed and format version.
 *
 * @module
 */

import {
  type Device,
  exportGGUF,
  formatBytes,
  GGUFReader,
  ggufTokenizerFromFiles,
  type GGUFWeightType,
  type LlamaConfig,
  LlamaModel,
  LoRALinear,
} from "../mod.ts";

/** The start of an atomic write's temporary file (lib/io/atomic_file.ts), left behind by a killed run. */
const TEMP_PREFIX = ".qlora-tmp-";

/** The llama.cpp file types compared, 16-bit first. */
export const PEER_GGUF_TYPES: readonly GGUFWeightType[] = ["bf16", "q4_0", "iq4_nl"];

/** Bumped when what the files hold changes: older cached files are then written again. */
const FORMAT = "qlora-lab peer bench v1";

/**
 * The shapes: `full` has LLaMA-2-7B's width (hidden 4096, intermediate 11008, 32 heads, vocabulary
 * 32,000) and 4 blocks; `quick` is a tiny model for the test of the command (rows multiples of 64 so
 * that NF4, Q4_0 and IQ4_NL all apply).
 *
 * @example
 * ```ts
 * import { PEER_SHAPES } from "./_peer_models.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals([PEER_SHAPES.full.dim, PEER_SHAPES.full.hiddenDim, PEER_SHAPES.full.layers], [4096, 11008, 4]);
 * ```
 */
export const PEER_SHAPES: Record<"full" | "quick", LlamaConfig> = {
  full: {
    vocabSize: 32000,
    dim: 4096,
    layers: 4,
    heads: 32,
    kvHeads: 32,
    hiddenDim: 11008,
    maxSeq: 1024,
    normEps: 1e-5,
    ropeTheta: 10000,
  },
  quick: {
    vocabSize: 512,
    dim: 128,
    layers: 2,
    heads: 4,
    kvHeads: 4,
    hiddenDim: 256,
    maxSeq: 256,
    normEps: 1e-5,
    ropeTheta: 10000,
  },
};

/**
 * A tokenizer for a synthetic model of `vocabSize` rows, as GGUF metadata: `<unk>`, `<s>`, `</s>`, the
 * 256 byte tokens and `▁` (what llama.cpp's `llama` vocabulary needs to load), the other ids unused
 * padding. The benchmark feeds token ids, never text.
 *
 * @example
 * ```ts
 * import { peerTokenizerMetadata } from "./_peer_models.ts";
 * import { assertEquals } from "@std/assert";
 * const m = peerTokenizerMetadata(512);
 * const tokens = m.get("tokenizer.ggml.tokens");
 * assertEquals(tokens?.type === "array" && tokens.values.length, 512);
 * assertEquals(m.get("tokenizer.ggml.bos_token_id"), { type: "u32", value: 1 });
 * ```
 */
export function peerTokenizerMetadata(vocabSize: number): ReturnType<typeof ggufTokenizerFromFiles> {
  const specials = ["<unk>", "<s>", "</s>"];
  const vocab: Record<string, number> = Object.fromEntries(specials.map((t, i) => [t, i]));
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`] = 3 + b;
  vocab["▁"] = 259;
  const tokenizer = {
    added_tokens: specials.map((content, id) => ({ id, content, special: true })),
    normalizer: { type: "Replace", pattern: { String: " " }, content: "▁" },
    model: { type: "BPE", byte_fallback: true, unk_token: "<unk>", vocab, merges: [] },
  };
  return ggufTokenizerFromFiles({ tokenizer, tokenizerConfig: { bos_token: "<s>", eos_token: "</s>" } }, {
    vocabSize,
  });
}

/**
 * The cached file's name for a shape, seed and type: every figure that changes the weights is in it.
 *
 * @example
 * ```ts
 * import { PEER_SHAPES, peerFileName } from "./_peer_models.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals(peerFileName(PEER_SHAPES.full, 1, "iq4_nl"), "peer-L4-d4096-f11008-h32-kv32-v32000-s1-iq4_nl.gguf");
 * ```
 */
export function peerFileName(c: LlamaConfig, seed: number, type: GGUFWeightType): string {
  return `peer-L${c.layers}-d${c.dim}-f${c.hiddenDim}-h${c.heads}-kv${c.kvHeads}-v${c.vocabSize}-s${seed}-${type}.gguf`;
}

/**
 * Ours: the bf16 model the GGUF files are written from (LoRA rank 8 on the seven linears of every block,
 * B zero as initialized, so merged it is the base), or its QLoRA twin (the same base weights quantized to
 * NF4 with double quantization, adapters unmerged).
 *
 * @example
 * ```ts
 * import { PEER_SHAPES, peerModel } from "./_peer_models.ts";
 * import { getDevice } from "../mod.ts";
 * import { assertEquals } from "@std/assert";
 * using model = peerModel(PEER_SHAPES.quick, "qlora", 1, getDevice("cpu"));
 * assertEquals(model.mode, "qlora");
 * ```
 */
export function peerModel(
  config: LlamaConfig,
  mode: "lora" | "qlora",
  seed: number,
  device: Device,
): LlamaModel {
  return new LlamaModel(config, { mode, dtype: "bf16", rank: 8, alpha: 16, seed, device });
}

/**
 * Merges every LoRA layer of `model` into its 16-bit base (one GEMM per projection), as inference of a
 * finished LoRA run does.
 *
 * @example
 * ```ts
 * import { mergeAll, PEER_SHAPES, peerModel } from "./_peer_models.ts";
 * import { getDevice, LoRALinear } from "../mod.ts";
 * import { assert } from "@std/assert";
 * using model = peerModel(PEER_SHAPES.quick, "lora", 1, getDevice("cpu"));
 * mergeAll(model);
 * const q = model.block(0).q_proj;
 * assert(q instanceof LoRALinear && q.merged);
 * ```
 */
export function mergeAll(model: LlamaModel): void {
  for (let i = 0; i < model.config.layers; i++) {
    for (const layer of Object.values(model.block(i))) if (layer instanceof LoRALinear) layer.merge();
  }
}

/** Whether `path` is a complete file of this benchmark's format for `name` (its header read, nothing else). */
async function cached(path: string, name: string, tensors: number): Promise<boolean> {
  try {
    await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
  using reader = await GGUFReader.open(path);
  return reader.value("general.name") === name && reader.tensors.length === tensors;
}

/** Bytes free on the file system of `dir`, from `df` (null where it cannot tell). */
async function freeBytes(dir: string): Promise<number | null> {
  try {
    const out = await new Deno.Command("df", { args: ["-B1", "--output=avail", dir], stdout: "piped" })
      .output();
    const n = Number(new TextDecoder().decode(out.stdout).trim().split("\n").at(-1));
    return out.code === 0 && Number.isFinite(n) ? n : null;
  } catch {
    return null;
  }
}

/**
 * The GGUF files of `model` (the unmerged bf16 model of {@linkcode peerModel}) under `dir`, one per
 * {@linkcode PEER_GGUF_TYPES}: cached ones reused, missing ones written (atomically; leftovers of an
 * interrupted write removed first). Throws when the disk has not room for the missing files.
 *
 * @example
 * ```ts ignore
 * import { PEER_SHAPES, peerGGUFFiles, peerModel } from "./_peer_models.ts";
 * import { getDevice } from "../mod.ts";
 * using model = peerModel(PEER_SHAPES.quick, "lora", 1, getDevice("cpu"));
 * const files = await peerGGUFFiles(model, 1, "build/peer-bench", console.log);
 * console.log(files.iq4_nl);
 * ```
 */
export async function peerGGUFFiles(
  model: LlamaModel,
  seed: number,
  dir: string,
  log: (line: string) => void,
): Promise<Record<string, string>> {
  const c = model.config;
  await Deno.mkdir(dir, { recursive: true });
  for (const entry of Deno.readDirSync(dir)) {
    if (entry.name.startsWith(TEMP_PREFIX)) await Deno.remove(`${dir}/${entry.name}`);
  }
  const name = `${FORMAT} seed ${seed}`;
  const tensors = 3 + 9 * c.layers;
  const files: Record<string, string> = {};
  const missing: GGUFWeightType[] = [];
  for (const type of PEER_GGUF_TYPES) {
    files[type] = `${dir}/${peerFileName(c, seed, type)}`;
    if (!await cached(files[type], name, tensors)) missing.push(type);
  }
  if (missing.length === 0) return files;
  const linear = c.layers * (4 * c.dim * c.dim + 3 * c.dim * c.hiddenDim);
  const outer = 2 * c.vocabSize * c.dim * 2;
  const need = missing.reduce((s, t) => s + outer + linear * (t === "bf16" ? 2 : 18 / 32), 0);
  const free = await freeBytes(dir);
  if (free !== null && free < need * 1.05) {
    throw new Error(
      `Cannot write the GGUF files under ${dir}: they need ${formatBytes(need)}, ${
        formatBytes(free)
      } is free`,
    );
  }
  const metadata = peerTokenizerMetadata(c.vocabSize);
  for (const type of missing) {
    const t0 = performance.now();
    const r = await exportGGUF(model, files[type], { type, metadata, keepEmbeddingsBf16: true, name });
    log(
      `wrote ${files[type]} (${formatBytes(r.bytes)}, ${
        Object.entries(r.tensorsPerType).map(([k, n]) => `${k} ${n}`).join(", ")
      }) in ${((performance.now() - t0) / 1000).toFixed(0)} s`,
    );
  }
  return files;
}
