/**
 * The claims table of `./deno task table`: each numeric claim of the seed document and the QLoRA paper
 * beside the measurement and a verdict.
 *
 * @module
 */

import {
  type Category,
  estimateMemory,
  formatBytes,
  gpuProfile,
  LLAMA_CONFIGS,
  type MemoryEstimate,
  willItFit,
} from "../../mod.ts";
import { fmtBytes, fmtCount, pct, TAGS } from "./format.ts";
import type { Measurement, Table, TableInput, Variant } from "./types.ts";

/** Tolerance of "about X" claims. */
const TOLERANCE = 0.2;

interface Figure7B {
  value: number;
  text: string;
  estimated: boolean;
}

/** A figure of the 7B shapes: measured when the run measured them, else the estimator's. */
function at7b(
  r: TableInput,
  v: Variant,
  pick: (m: Measurement | MemoryEstimate, isEstimate: boolean) => number,
): Figure7B {
  const cell = r.shape?.name === "7b" ? r.shape.cells[v] : null;
  if (cell?.value) {
    const value = pick(cell.value, false);
    return { value, text: `${fmtBytes(value)} [${TAGS[cell.how]}]`, estimated: false };
  }
  const seq = r.shape?.seq ?? 64, batch = r.shape?.batch ?? 1;
  const e = estimateMemory(LLAMA_CONFIGS["7b"], {
    mode: v === "full-mixed" ? "full" : v,
    seq,
    batch,
    masterWeights: v !== "full",
  });
  const value = pick(e, true);
  return { value, text: `${fmtBytes(value)} (estimate only: 7B not measured in this run)`, estimated: true };
}

const peakOf = (m: Measurement | MemoryEstimate, est: boolean) =>
  est ? (m as MemoryEstimate).peak : (m as Measurement).totalPeak;
const catOf = (c: Category) => (m: Measurement | MemoryEstimate) => m.bytes[c];

function about(claimed: number, f: Figure7B, because: string): string {
  const ok = Math.abs(f.value - claimed) <= TOLERANCE * claimed;
  const v = ok ? "holds" : `does not hold, because ${because}`;
  return f.estimated ? `${v} (estimate)` : v;
}

/** One row of the claims table. */
type Add = (claim: string, source: string, claimed: string, measured: string, verdict: string) => void;

const GB = 1e9;
const SEED = "seed document", PAPER = "QLoRA paper";

/** Builds the claims table: each numeric claim beside the measurement and a verdict. */
export function claimsTable(r: TableInput): Table {
  const p7 = estimateMemory(LLAMA_CONFIGS["7b"], { mode: "full", seq: 1, batch: 1 }).parameters;
  const seq = r.shape?.seq ?? 64, batch = r.shape?.batch ?? 1;
  const rows: string[][] = [];
  const add: Add = (claim, source, claimed, measured, verdict) =>
    rows.push([claim, source, claimed, measured, verdict]);
  memoryClaims(r, add, p7);
  rtx3060Claim(r, add);
  constantsClaims(r, add);
  inferenceClaim(r, add);
  paperClaims(r, add);
  return {
    title: "Claims checked",
    headers: ["Claim", "Source", "Claimed", "Measured", "Verdict"],
    rows,
    notes: [
      `"~X" claims hold within +-${pct(TOLERANCE, 0)}; GB = 1e9 bytes, GiB = 2^30. 7B figures: LLaMA-2-7B ` +
      `shapes (${fmtCount(p7)} parameters), ${batch}x${seq} tokens per step, bf16 weights.`,
      "Constants measured by quantizing a 4096x4096 bf16 weight (NF4, blocksize 64) with and without double quantization.",
    ],
  };
}

/** The seed document's memory figures for a 7B model: full fine-tuning and its parts, LoRA, QLoRA. */
function memoryClaims(r: TableInput, add: Add, p7: number): void {
  const seed = SEED;
  const full = at7b(r, "full", peakOf);
  const mixed = at7b(r, "full-mixed", peakOf);
  const fw = at7b(r, "full", catOf("weights"));
  const fg = at7b(r, "full", catOf("gradients"));
  const fo = at7b(r, "full", catOf("optimizer_states"));
  const lora = at7b(r, "lora", peakOf);
  const qlora = at7b(r, "qlora", peakOf);
  add(
    "Full fine-tuning of a 7B model needs ~56 GB",
    seed,
    "56 GB",
    `${full.text}; mixed precision ${mixed.text}`,
    about(
      56 * GB,
      full,
      `Adam keeps m and v in f32, 8 bytes per parameter (${
        fmtBytes(fo.value)
      } alone), and mixed precision adds ` +
        `an f32 master copy (${fmtBytes(mixed.value)} in all); activations come on top`,
    ),
  );
  add(
    "... of which weights 14 GB (16-bit)",
    seed,
    "14 GB",
    fw.text,
    about(14 * GB, fw, "the weights are not 2 bytes each"),
  );
  add(
    "... gradients 14 GB (16-bit)",
    seed,
    "14 GB",
    fg.text,
    about(14 * GB, fg, "the gradients are not 2 bytes each"),
  );
  add(
    "... optimizer states 28 GB",
    seed,
    "28 GB",
    fo.text,
    about(
      28 * GB,
      fo,
      `Adam has two states per parameter in f32: ${(fo.value / p7).toFixed(1)} bytes per parameter, not 4 ` +
        `(28 GB would be one f32 state, or two 16-bit states)`,
    ),
  );
  add(
    "LoRA fine-tuning of a 7B model needs ~15 GB",
    seed,
    "15 GB",
    lora.text,
    about(15 * GB, lora, "the frozen 16-bit base alone is 13.5 GB and the rest is small"),
  );
  add(
    "QLoRA fine-tuning of a 7B model needs ~4.5 GB",
    seed,
    "4.5 GB",
    qlora.text,
    about(4.5 * GB, qlora, "see the base weights row: NF4 blocks, 16-bit embeddings and LM head"),
  );
}

/** "QLoRA fits a 6 GB RTX 3060", judged as `deno task fit` judges it. */
function rtx3060Claim(r: TableInput, add: Add): void {
  const seed = SEED;
  const qlora = at7b(r, "qlora", peakOf);
  const seq = r.shape?.seq ?? 64, batch = r.shape?.batch ?? 1;
  // Judged by `deno task fit`'s logic: the estimate with the CUDA backend's 4-bit workspace, plus the
  // typical CUDA context of an RTX 3060 (what the device takes before the first tensor). Where the 7B
  // QLoRA step was measured, the measured peak (with CUDA's workspace in place of the CPU's) must fit too.
  const gpu = gpuProfile("rtx3060-6gb");
  const fit = willItFit(LLAMA_CONFIGS["7b"], { mode: "qlora", seq, batch }, gpu);
  const cpuWorkspace = estimateMemory(LLAMA_CONFIGS["7b"], { mode: "qlora", seq, batch }).bytes.workspace;
  const measuredNeed = qlora.estimated
    ? null
    : qlora.value - cpuWorkspace + fit.estimate.bytes.workspace + fit.context.bytes;
  const fits = fit.fits && (measuredNeed === null || measuredNeed <= gpu.memory);
  const maxSeq = fit.largest.qlora.seq;
  // The longest a step of batch 1 reaches with the blocks' inputs in host memory (and the loss in chunks).
  const offloaded = willItFit(
    LLAMA_CONFIGS["7b"],
    { mode: "qlora", seq, batch, checkpointing: true, offloadCheckpoints: true },
    gpu,
  ).largest.qlora.seq;
  const longest = `${offloaded.toLocaleString("en-US")} with checkpoints offloaded to host memory${
    offloaded >= LLAMA_CONFIGS["7b"].maxSeq ? " (LLaMA-2-7B's whole context)" : ""
  }`;
  add(
    "QLoRA fits a 6 GB RTX 3060",
    seed,
    "peak <= 6 GiB",
    `${qlora.text} at ${batch}x${seq} tokens${
      r.options.budget ? `, run under a ${(r.options.budget / 2 ** 30).toFixed(2)} GiB budget` : ""
    }; deno task fit: ${formatBytes(fit.estimate.peak)} (CUDA workspace) + CUDA context ${
      formatBytes(fit.context.bytes)
    } (${fit.context.source}) = ${formatBytes(fit.required)} of ${formatBytes(gpu.memory)}${
      measuredNeed === null ? "" : ` (measured peak + context: ${formatBytes(measuredNeed)})`
    }; fits up to seq ${maxSeq.toLocaleString("en-US")} at batch ${batch}, ${longest}`,
    (fits
      ? `holds at this sequence length (${fit.verdict}; up to seq ~${
        maxSeq.toLocaleString("en-US")
      } at batch ${batch}, ~${longest}, the CUDA context counted)`
      : `does not hold, because at ${batch}x${seq} tokens deno task fit says: ${fit.verdict}`) +
      (qlora.estimated ? " (estimate)" : ""),
  );
}

/** The adapter size and double quantization's saving, measured on one real-size weight. */
function constantsClaims(r: TableInput, add: Add): void {
  const seed = SEED;
  const c = r.constants;
  const dense = c.shape[0] * c.shape[1];
  add(
    "LoRA rank 8 on a 4096x4096 layer trains 65,536 parameters",
    seed,
    "65,536",
    `${c.adapterParameters.toLocaleString("en-US")} (LoRALinear on a ${c.shape.join("x")} weight)`,
    c.adapterParameters === 65536 ? "holds" : `does not hold, because r(in + out) = ${c.adapterParameters}`,
  );
  const fewer = 1 - c.adapterParameters / dense;
  const loraCell = r.shape?.cells.lora.value ?? null;
  const whole = loraCell
    ? `; whole ${r.shape!.name}: ${pct(1 - loraCell.trainable / loraCell.parameters, 2)} fewer`
    : "";
  add(
    "... that is 99.6% fewer than the layer's 16.8M",
    seed,
    "99.6%",
    `${pct(fewer, 2)} fewer (65,536 of ${dense.toLocaleString("en-US")})${whole}`,
    Math.abs(fewer - 0.996) < 0.0005 ? "holds" : `does not hold, because it is ${pct(fewer, 2)}`,
  );
  const saved = c.plainBits - c.doubleQuantBits;
  const per65 = (saved * 65e9) / 8;
  add(
    "Double quantization saves 0.37 GB per 65B parameters",
    seed,
    "0.37 GB",
    `${saved.toFixed(3)} bits/param saved (constants ${c.plainBits.toFixed(3)} -> ${
      c.doubleQuantBits.toFixed(3)
    }) ` +
      `= ${fmtBytes(per65)} per 65B parameters`,
    Math.abs(per65 - 0.37e9) <= TOLERANCE * 0.37e9
      ? "holds"
      : `does not hold, because the saving is ${saved.toFixed(3)} bits (not GB) per parameter: ${
        fmtBytes(per65)
      } ` +
        "for 65B parameters, as the paper says (about 3 GB)",
  );
}

/** Decode and prompt tokens per second of a column (its largest scale measured), or null. */
function speeds(
  r: TableInput,
  v: "lora" | "qlora",
): { decode: number; prefill: number; tokens: number; tag: string } | null {
  const cell = r.shape?.cells[v];
  const t = cell?.value?.inference ?? r.tiny.runs.find((x) => x.mode === v)?.inference;
  if (!t || t.prefill.length === 0) return null;
  const p = t.prefill[t.prefill.length - 1];
  const tag = cell?.value ? `${r.shape!.name} [${TAGS[cell.how]}]` : "tiny";
  return { decode: 1 / t.decodeSeconds, prefill: p.tokens / p.seconds, tokens: p.tokens, tag };
}

/**
 * The table's last row: QLoRA's inference against merged LoRA's, as generation measures it (decode at
 * batch 1, and a prompt's prefill). "Slightly slower" holds for a ratio in [0.8, 1).
 */
function inferenceClaim(r: TableInput, add: Add): void {
  const lora = speeds(r, "lora"), qlora = speeds(r, "qlora");
  if (!lora || !qlora) return;
  const decode = qlora.decode / lora.decode, prefill = qlora.prefill / lora.prefill;
  const judge = (x: number) => x >= 1 ? "faster" : x >= 0.8 ? "slightly slower" : "much slower";
  const verdicts = [judge(decode), judge(prefill)];
  add(
    "QLoRA inference is slightly slower than LoRA (due to dequantization)",
    SEED,
    "slightly slower",
    `${qlora.tag}: decode at batch 1 ${decode.toFixed(2)}x merged LoRA (${qlora.decode.toFixed(1)} vs ` +
      `${lora.decode.toFixed(1)} tok/s); a ${qlora.tokens}-token prompt ${prefill.toFixed(2)}x ` +
      `(${qlora.prefill.toFixed(1)} vs ${lora.prefill.toFixed(1)} tok/s)`,
    verdicts.every((v) => v === "slightly slower")
      ? "holds"
      : `does not hold, because decoding is ${verdicts[0]} (${
        decode >= 1
          ? "it reads every weight once per token, NF4 a quarter of bf16's bytes"
          : "the 4-bit path costs more per weight than the bytes it saves"
      }) and a prompt ${verdicts[1]} (${
        prefill >= 1
          ? "the 4-bit product beats the bf16 GEMM"
          : "compute-bound: the same bf16 multiply, plus decoding every weight once per prompt"
      })`,
  );
}

/** The QLoRA paper's figures: a 7B model in about 5 GB, constants from 0.5 to 0.127 bits. */
function paperClaims(r: TableInput, add: Add): void {
  const paper = PAPER;
  const qlora = at7b(r, "qlora", peakOf);
  const c = r.constants;
  add(
    "A 4-bit (QLoRA) 7B model trains in about 5 GB",
    paper,
    "~5 GB",
    qlora.text,
    about(5 * GB, qlora, "the measured peak is far from it"),
  );
  add(
    "Double quantization: constants from 0.5 to 0.127 bits per parameter",
    paper,
    "0.5 -> 0.127",
    `${c.plainBits.toFixed(4)} -> ${c.doubleQuantBits.toFixed(4)} bits/param (${
      c.totalBits.toFixed(3)
    } in all)`,
    Math.abs(c.plainBits - 0.5) < 0.001 && Math.abs(c.doubleQuantBits - 0.127) < 0.001
      ? "holds"
      : "does not hold, because the measured storage differs",
  );
}
