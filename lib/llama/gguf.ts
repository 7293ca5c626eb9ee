/**
 * GGUF export of a {@linkcode LlamaModel}, for llama.cpp and the programs built on it: one file with the
 * architecture's metadata (`llama.*`), the tokenizer's (see `gguf_tokenizer.ts`) and every weight, written
 * one weight at a time ({@linkcode exportGGUF}).
 *
 * What changes on the way, as llama.cpp's `convert_hf_to_gguf.py` does it:
 * - names: Hugging Face's `model.layers.N.self_attn.q_proj.weight` becomes `blk.N.attn_q.weight`, and so on
 *   ({@linkcode ggufTensorName});
 * - the rows of `q_proj` and `k_proj`: transformers rotates the two halves of each head
 *   (`x[i]` with `x[i + d/2]`), llama.cpp's `llama` architecture adjacent pairs (`x[2i]` with `x[2i + 1]`);
 *   the rows of each head are interleaved so that both compute the same attention ({@linkcode permuteRope});
 * - the types: 1-D weights (the RMSNorm scales) stay F32, the matrices become BF16, Q8_0, Q4_0 or IQ4_NL
 *   (`gguf_quant.ts`); the token embedding and the LM head may be kept in BF16 whatever the rest.
 *
 * LoRA and QLoRA models are exported merged: layers not merged yet are merged one block at a time while
 * the block is written (`LoRALinear.merge`: `W + s · B A`, an NF4 base dequantized first) and unmerged
 * after it, so a QLoRA model never holds more than one block's 16-bit weights.
 *
 * @module
 */

import { InvalidArgumentError } from "../base/mod.ts";
import {
  encodeTensor,
  GGML_TYPES,
  type GGMLType,
  GGUF_DEFAULT_ALIGNMENT,
  type GGUFMetadata,
  type GGUFTensorEntry,
  type GGUFTensorInfo,
  ggufValue,
  GGUFWriter,
} from "../io/mod.ts";
import type { LlamaConfig } from "./llama_config.ts";
import { LoRALinear } from "../nn/mod.ts";
import type { LlamaModel } from "./model.ts";

/** The weight types of {@linkcode exportGGUF}, as llama.cpp names its file types. */
export type GGUFWeightType = "bf16" | "q8_0" | "q4_0" | "iq4_nl";

/** The GGUF weight types, for command lines. */
export const GGUF_WEIGHT_TYPES: readonly GGUFWeightType[] = ["bf16", "q8_0", "q4_0", "iq4_nl"];

const TENSOR_TYPE: Record<GGUFWeightType, GGMLType> = {
  bf16: "BF16",
  q8_0: "Q8_0",
  q4_0: "Q4_0",
  iq4_nl: "IQ4_NL",
};

// llama.cpp's llama_ftype values (general.file_type): what most tensors are.
const FILE_TYPE: Record<GGUFWeightType, number> = { bf16: 32, q8_0: 7, q4_0: 2, iq4_nl: 25 };

const BLOCK_NAMES: Record<string, string> = {
  "input_layernorm": "attn_norm",
  "self_attn.q_proj": "attn_q",
  "self_attn.k_proj": "attn_k",
  "self_attn.v_proj": "attn_v",
  "self_attn.o_proj": "attn_output",
  "post_attention_layernorm": "ffn_norm",
  "mlp.gate_proj": "ffn_gate",
  "mlp.up_proj": "ffn_up",
  "mlp.down_proj": "ffn_down",
};

/**
 * The GGUF (llama.cpp) name of a LLaMA weight's Hugging Face name.
 *
 * @throws {InvalidArgumentError} for a name that is not a LLaMA weight.
 *
 * @example
 * ```ts
 * import { ggufTensorName } from "./gguf.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals(ggufTensorName("model.layers.3.self_attn.o_proj.weight"), "blk.3.attn_output.weight");
 * assertEquals(ggufTensorName("lm_head.weight"), "output.weight");
 * ```
 */
export function ggufTensorName(hfName: string): string {
  const fixed: Record<string, string> = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
  };
  if (fixed[hfName]) return fixed[hfName];
  const m = /^model\.layers\.(\d+)\.(.+)\.weight$/.exec(hfName);
  const name = m && BLOCK_NAMES[m[2]];
  if (!name) throw new InvalidArgumentError(`Cannot name ${hfName} in GGUF: not a LLaMA weight`);
  return `blk.${m[1]}.${name}.weight`;
}

function checkRope(length: number, heads: number, cols: number): number {
  const rows = length / cols;
  if (!Number.isInteger(rows) || rows % heads !== 0 || (rows / heads) % 2 !== 0) {
    throw new InvalidArgumentError(
      `Cannot permute for RoPE: ${length} values are not ${heads} heads of an even number of rows of ${cols}`,
    );
  }
  return rows / heads;
}

/**
 * The rows of a `q_proj` or `k_proj` weight (`[heads · headDim, cols]`, row-major) reordered from
 * transformers' RoPE layout to llama.cpp's: within each head, row `i` of the first half goes to `2i`, row
 * `i` of the second half to `2i + 1` (`convert_hf_to_gguf.py`'s `permute`; for `k_proj` pass the
 * key-value heads). {@linkcode unpermuteRope} undoes it.
 *
 * @example
 * ```ts
 * import { permuteRope, unpermuteRope } from "./gguf.ts";
 * import { assertEquals } from "@std/assert";
 * const w = Float32Array.from([0, 1, 2, 3, 4, 5, 6, 7]); // 2 heads of 4 rows of 1
 * assertEquals([...permuteRope(w, 2, 1)], [0, 2, 1, 3, 4, 6, 5, 7]);
 * assertEquals(unpermuteRope(permuteRope(w, 2, 1), 2, 1), w);
 * ```
 */
export function permuteRope(values: Float32Array, heads: number, cols: number): Float32Array {
  return reorder(values, heads, cols, false);
}

/**
 * The inverse of {@linkcode permuteRope}: llama.cpp's interleaved rows back to transformers' halves.
 *
 * @example
 * ```ts
 * import { unpermuteRope } from "./gguf.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals([...unpermuteRope(Float32Array.from([0, 2, 1, 3]), 1, 1)], [0, 1, 2, 3]);
 * ```
 */
export function unpermuteRope(values: Float32Array, heads: number, cols: number): Float32Array {
  return reorder(values, heads, cols, true);
}

function reorder(values: Float32Array, heads: number, cols: number, inverse: boolean): Float32Array {
  const hd = checkRope(values.length, heads, cols), half = hd / 2;
  const out = new Float32Array(values.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let s = 0; s < 2; s++) {
        const hf = h * hd + s * half + i, gguf = h * hd + 2 * i + s;
        const [from, to] = inverse ? [gguf, hf] : [hf, gguf];
        out.set(values.subarray(from * cols, (from + 1) * cols), to * cols);
      }
    }
  }
  return out;
}

/** Options of {@linkcode exportGGUF}. */
export interface GGUFExportOptions {
  /** Type of the matrices (default `bf16`); 1-D weights are always F32. */
  type?: GGUFWeightType;
  /** Keep `token_embd` and `output` in BF16 whatever `type` is (default false). */
  keepEmbeddingsBf16?: boolean;
  /** `general.name` (default "llama"). */
  name?: string;
  /** More metadata, written after the architecture's (the tokenizer's: see `ggufTokenizerMetadata`). */
  metadata?: GGUFMetadata;
  /** Called after each tensor is written. */
  onTensor?: (info: GGUFTensorInfo, index: number, count: number) => void;
}

/** What {@linkcode exportGGUF} wrote. */
export interface GGUFExportReport {
  /** The file. */
  path: string;
  /** Its size. */
  bytes: number;
  /** Every tensor, in file order. */
  tensors: readonly GGUFTensorInfo[];
  /** Weights in the file. */
  elements: number;
  /** Tensor data bits per weight (file size aside). */
  bitsPerWeight: number;
  /** Tensors per type (`{ Q4_0: 14, F32: 5, ... }`). */
  tensorsPerType: Record<string, number>;
  /** Matrices stored as BF16 because their rows are not a whole number of 32-element blocks. */
  fallbacks: string[];
}

/**
 * The metadata llama.cpp's `llama` architecture needs, for a model of this shape.
 *
 * @example
 * ```ts
 * import { ggufLlamaMetadata, LLAMA_CONFIGS } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const m = ggufLlamaMetadata(LLAMA_CONFIGS["7b"], { type: "q4_0", name: "llama-2-7b" });
 * assertEquals(m.get("llama.rope.dimension_count"), { type: "u32", value: 128 });
 * assertEquals(m.get("general.file_type"), { type: "u32", value: 2 });
 * ```
 */
export function ggufLlamaMetadata(
  c: LlamaConfig,
  options: { type?: GGUFWeightType; name?: string } = {},
): GGUFMetadata {
  const type = options.type ?? "bf16";
  const u32 = (v: number) => ggufValue("u32", v);
  const m: GGUFMetadata = new Map([
    ["general.architecture", ggufValue("string", "llama")],
    ["general.name", ggufValue("string", options.name ?? "llama")],
    ["general.file_type", u32(FILE_TYPE[type])],
    ["general.alignment", u32(GGUF_DEFAULT_ALIGNMENT)],
  ]);
  if (type !== "bf16") m.set("general.quantization_version", u32(2));
  m.set("llama.vocab_size", u32(c.vocabSize));
  m.set("llama.context_length", u32(c.maxSeq));
  m.set("llama.embedding_length", u32(c.dim));
  m.set("llama.block_count", u32(c.layers));
  m.set("llama.feed_forward_length", u32(c.hiddenDim));
  m.set("llama.rope.dimension_count", u32(c.dim / c.heads));
  m.set("llama.attention.head_count", u32(c.heads));
  m.set("llama.attention.head_count_kv", u32(c.kvHeads));
  m.set("llama.attention.layer_norm_rms_epsilon", ggufValue("f32", c.normEps));
  m.set("llama.rope.freq_base", ggufValue("f32", c.ropeTheta));
  return m;
}

/** The tensors of the file in the order of `model.weights()`, with their Hugging Face names. */
function plan(
  c: LlamaConfig,
  type: GGMLType,
  keepBf16: boolean,
): { hf: string; entry: GGUFTensorEntry; fallback: boolean }[] {
  const hd = c.dim / c.heads;
  const shapes: [string, number[]][] = [["model.embed_tokens.weight", [c.vocabSize, c.dim]]];
  for (let i = 0; i < c.layers; i++) {
    const p = `model.layers.${i}`;
    shapes.push(
      [`${p}.input_layernorm.weight`, [c.dim]],
      [`${p}.self_attn.q_proj.weight`, [c.heads * hd, c.dim]],
      [`${p}.self_attn.k_proj.weight`, [c.kvHeads * hd, c.dim]],
      [`${p}.self_attn.v_proj.weight`, [c.kvHeads * hd, c.dim]],
      [`${p}.self_attn.o_proj.weight`, [c.dim, c.heads * hd]],
      [`${p}.post_attention_layernorm.weight`, [c.dim]],
      [`${p}.mlp.gate_proj.weight`, [c.hiddenDim, c.dim]],
      [`${p}.mlp.up_proj.weight`, [c.hiddenDim, c.dim]],
      [`${p}.mlp.down_proj.weight`, [c.dim, c.hiddenDim]],
    );
  }
  shapes.push(["model.norm.weight", [c.dim]], ["lm_head.weight", [c.vocabSize, c.dim]]);
  return shapes.map(([hf, shape]) => {
    const outer = hf === "model.embed_tokens.weight" || hf === "lm_head.weight";
    const t: GGMLType = shape.length === 1 ? "F32" : outer && keepBf16 ? "BF16" : type;
    const fallback = shape.at(-1)! % GGML_TYPES[t].blockSize !== 0;
    return { hf, entry: { name: ggufTensorName(hf), type: fallback ? "BF16" : t, shape }, fallback };
  });
}

/**
 * Writes `model` as a GGUF v3 file that llama.cpp loads as a `llama` model: the architecture's metadata
 * ({@linkcode ggufLlamaMetadata}), `options.metadata` (the tokenizer's), and every weight, one at a time,
 * renamed, q/k permuted for llama.cpp's RoPE, and stored as `options.type` (see the module
 * documentation). The file is written atomically. Unmerged LoRA layers are merged block by block and
 * unmerged again (a 16-bit base gets `s · B A` subtracted back, as `LoRALinear.unmerge` does).
 *
 * @example
 * ```ts
 * import { exportGGUF, GGUFReader, LlamaModel } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const config = { vocabSize: 32, dim: 32, layers: 1, heads: 2, kvHeads: 1, hiddenDim: 64, maxSeq: 16,
 *   normEps: 1e-5, ropeTheta: 10000 };
 * using model = new LlamaModel(config, { mode: "qlora", rank: 2 });
 * const path = await Deno.makeTempFile({ suffix: ".gguf" });
 * const report = await exportGGUF(model, path, { type: "q4_0" });
 * assertEquals(report.tensorsPerType, { Q4_0: 9, F32: 3 });
 * using reader = await GGUFReader.open(path);
 * assertEquals(reader.info("blk.0.attn_k.weight").shape, [16, 32]);
 * await Deno.remove(path);
 * ```
 */
export async function exportGGUF(
  model: LlamaModel,
  path: string,
  options: GGUFExportOptions = {},
): Promise<GGUFExportReport> {
  const c = model.config;
  const type = options.type ?? "bf16";
  if (!(type in TENSOR_TYPE)) {
    throw new InvalidArgumentError(
      `Cannot export ${path}: type ${type} is not one of ${GGUF_WEIGHT_TYPES.join(", ")}`,
    );
  }
  const tensors = plan(c, TENSOR_TYPE[type], options.keepEmbeddingsBf16 ?? false);
  const metadata = ggufLlamaMetadata(c, { type, name: options.name });
  for (const [k, v] of options.metadata ?? []) {
    if (metadata.has(k)) {
      throw new InvalidArgumentError(`Cannot export ${path}: metadata ${k} is the model's`);
    }
    metadata.set(k, v);
  }
  await using writer = await GGUFWriter.create(path, metadata, tensors.map((t) => t.entry));
  const merged: LoRALinear[] = [];
  const unmerge = () => merged.splice(0).forEach((l) => l.unmerge());
  try {
    let i = 0;
    // weights() is lazy: a block's layers are merged when its first weight comes, before its projections.
    for (const [hf, t] of model.weights()) {
      const { entry } = tensors[i];
      if (hf !== tensors[i].hf) {
        throw new InvalidArgumentError(
          `Cannot export ${path}: the model gave ${hf} where ${tensors[i].hf} was expected`,
        );
      }
      const block = /^model\.layers\.(\d+)\.input_layernorm/.exec(hf);
      if (block) {
        unmerge();
        for (const l of Object.values(model.block(Number(block[1])))) {
          if (l instanceof LoRALinear && !l.merged) l.merge(), merged.push(l);
        }
      }
      let values = t.toFloat32();
      if (hf.endsWith("q_proj.weight")) values = permuteRope(values, c.heads, c.dim);
      if (hf.endsWith("k_proj.weight")) values = permuteRope(values, c.kvHeads, c.dim);
      await writer.write(entry.name, encodeTensor(entry.type, values));
      options.onTensor?.(writer.tensors[i], i, tensors.length);
      i++;
    }
  } finally {
    unmerge();
  }
  await writer.close();
  let elements = 0, dataBytes = 0;
  const tensorsPerType: Record<string, number> = {};
  for (const t of writer.tensors) {
    elements += t.shape.reduce((a, b) => a * b, 1);
    dataBytes += t.byteLength;
    tensorsPerType[t.type] = (tensorsPerType[t.type] ?? 0) + 1;
  }
  const fallbacks = tensors.filter((t) => t.fallback).map((t) => t.entry.name);
  return {
    path,
    bytes: writer.fileSize,
    tensors: writer.tensors,
    elements,
    bitsPerWeight: (8 * dataBytes) / elements,
    tensorsPerType,
    fallbacks,
  };
}
