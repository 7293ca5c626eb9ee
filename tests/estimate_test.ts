import { assert, assertAlmostEquals, assertEquals, assertThrows } from "@std/assert";
import {
  AdamW,
  ADAMW8_BLOCK,
  AdamW8bit,
  adapterParameters,
  backendAvailable,
  CATEGORIES,
  type Category,
  countParameters,
  defaultLossChunk,
  estimateMemory,
  type EstimateOptions,
  getDevice,
  InvalidArgumentError,
  LLAMA_CONFIGS,
  type LlamaConfig,
  LlamaModel,
  matmul4bitWorkspace,
  maxSequenceWithin,
  nf4BitsPerParameter,
  type OptimizerKind,
  PagedAdamW,
  quantizedBytes,
  type TargetModule,
  Tensor,
  type TrainMode,
} from "../mod.ts";
import { error, UNMODELLED_SCRATCH, workspaceError } from "./_estimate_judge.ts";

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
  // tail: last hidden, final norm, logits (2·(2·4096 + 32000)) + rstd = 80,388; token ids and targets: 8
  // backward of the last block: 2·(4096 + 3·11008) = 74,240 (the incoming gradient with SwiGLU's d(act),
  // d(gate) and d(up), the largest set live at once)
  assertEquals(e.activationsPerToken, { saved: 32 * 131_720 + 80_388 + 8, transient: 74_240 });
  assertEquals(e.bytes.activations, 64 * (32 * 131_720 + 80_388 + 8 + 74_240));
  const ckpt = estimateMemory(C7, { mode: "full", seq: 64, batch: 1, checkpointing: true });
  assertEquals(ckpt.activationsPerToken.saved, 32 * 2 * 4096 + 131_720 - 2 * 4096 + 80_388 + 8);
  const lora = estimateMemory(C7, { mode: "lora", seq: 64, batch: 1 });
  assertEquals(lora.activationsPerToken.saved - e.activationsPerToken.saved, 32 * 7 * 8 * 2); // h = x Aᵀ
  // down_proj's h is freed by the time the MLP's gradients peak
  assertEquals(lora.activationsPerToken.transient, 74_240 - 8 * 2);
  // Activations grow linearly with tokens, so the 6 GiB limit is a sequence length.
  const max = maxSequenceWithin(C7, { mode: "qlora", batch: 1 }, 6 * 2 ** 30);
  assert(estimateMemory(C7, { mode: "qlora", seq: max, batch: 1 }).peak <= 6 * 2 ** 30);
  assert(estimateMemory(C7, { mode: "qlora", seq: max + 1, batch: 1 }).peak > 6 * 2 ** 30);
  assertEquals(maxSequenceWithin(C7, { mode: "full", batch: 1 }, 6 * 2 ** 30), 0);
});

Deno.test("estimate: optimizers, paging and the 4-bit workspace of each backend", () => {
  const at = (o: Partial<EstimateOptions>) => estimateMemory(C7, { mode: "qlora", seq: 512, batch: 1, ...o });
  // 8-bit Adam: two u8 codes per value and two f32 absmax per block of 256, per tensor.
  const q8 = at({ optimizer: "8bit", masterWeights: false });
  let states = 0;
  for (
    const [out, inp] of [
      [4096, 4096],
      [4096, 4096],
      [4096, 4096],
      [4096, 4096],
      [11008, 4096],
      [11008, 4096],
      [4096, 11008],
    ]
  ) {
    for (const n of [8 * inp, out * 8]) states += 2 * n + 8 * Math.ceil(n / ADAMW8_BLOCK);
  }
  assertEquals(q8.bytes.optimizer_states, 32 * states);
  assertAlmostEquals(q8.perTrainable.optimizerStates, 2 + 8 / 256, 1e-3);
  // Paged: the same bytes as AdamW, of which m and v may sit in host RAM (the masters stay).
  const paged = at({ optimizer: "paged" }), plain = at({});
  assertEquals(paged.bytes, plain.bytes);
  assertEquals([paged.pageable, paged.masterWeights], [8 * ADAPTERS_7B, 4 * ADAPTERS_7B]);
  assertEquals(paged.minimum, paged.peak - 8 * ADAPTERS_7B + 4 * 2 ** 20);
  assertEquals([plain.pageable, plain.minimum], [0, plain.peak]);
  // Workspace: the CPU's largest is down_proj's forward at 512 rows, its panel GEMM's scratch (X arranged,
  // 512 x 11,008 bf16, and per thread a panel of 96 rows x 4,096 values of W in bf16 and a 96 x 512 f32
  // tile); CUDA decodes W where it reads it (no 4-bit workspace), so its largest is a kernel's own
  // scratch: RMSNorm's partial column sums, 4 · ceil(tokens / 32) · dim.
  const cuda = at({ backend: "cuda" }), cpu = at({ threads: 2 });
  assertEquals(cuda.bytes.workspace, 4 * 16 * 4096);
  const forward = matmul4bitWorkspace([4096, 11008], 512, true, { dtype: "bf16", threads: 2 });
  assertEquals(forward, 512 * 11008 * 2 + 2 * (96 * 4096 * 2 + 96 * 512 * 4));
  assertEquals(cpu.bytes.workspace, forward);
  // The input gradient's panels: per thread 256 x 128 bf16 and 512 x 128 f32; f32 X takes no panels, and
  // its tile (1,024 columns of W as f32) comes through the ledger beside the workspace.
  const grad = 2 * (256 * 128 * 2 + 512 * 128 * 4);
  assertEquals(matmul4bitWorkspace([4096, 11008], 512, false, { dtype: "bf16", threads: 2 }), grad);
  assertEquals(matmul4bitWorkspace([4096, 11008], 512, false, { threads: 2 }), grad + 1024 * 4096 * 4);
  // Past 512 rows forward, oneDNN multiplies dequantized tiles (368 rows of W) in the workspace and keeps
  // f32 accumulators per thread (rows x the tile's columns).
  assertEquals(
    matmul4bitWorkspace([4096, 11008], 1024, true, { dtype: "bf16", threads: 2 }),
    368 * 11008 * 4 + 2 * 1024 * 368 * 4,
  );
  assertEquals(at({ backend: "cuda", seq: 4 }).bytes.workspace, 4 * 1 * 4096); // the GEMV: none either
});

Deno.test("estimate: the 4-bit workspace formulas mirror qlora_gemm_4bit_workspace", () => {
  const backends = [getDevice()];
  if (backendAvailable("cuda-emu")) backends.push(getDevice("cuda-emu")); // the CUDA sources, emulated
  const bytes = new BigUint64Array(1);
  for (const device of backends) {
    const backend = device.backend === "cpu" ? "cpu" : "cuda";
    for (const [out, inp] of [[4096, 4096], [11008, 4096], [4096, 11008], [1024, 8192], [160, 64], [3, 5]]) {
      for (const tokens of [1, 4, 5, 64, 2048]) {
        for (const transW of [true, false]) {
          const [n, k] = transW ? [out, inp] : [inp, out];
          device.check(
            device.native.symbols.qlora_gemm_4bit_workspace(
              transW ? 1 : 0,
              BigInt(tokens),
              BigInt(n),
              BigInt(k),
              bytes,
            ),
          );
          // The CPU's fused forward for up to 8 rows of f32 X: the rows' f32 dot products, its own scratch.
          const dots = backend === "cpu" && transW && tokens <= 8 ? 4 * tokens * n : 0;
          // f32 X takes no panel GEMM: where the workspace was sized for the panels (past 8 rows; forward
          // up to 512) and holds less than a tile of W as f32 (2^22 values, widths a multiple of 16), the
          // tile comes through the ledger beside it.
          const panelRows = backend === "cpu" && tokens > 8 && (!transW || tokens <= 512);
          const width = Math.floor(2 ** 22 / k),
            tile = Math.min(width >= 16 ? width - width % 16 : width, n) * k * 4;
          const extra = panelRows && Number(bytes[0]) < tile ? tile : 0;
          assertEquals(
            matmul4bitWorkspace([out, inp], tokens, transW, { backend }),
            Number(bytes[0]) + dots + extra,
            `${device.backend} [${out}, ${inp}] x ${tokens} transW ${transW}`,
          );
        }
      }
    }
  }
});

Deno.test("estimate: bad options are refused", () => {
  assertThrows(
    () => estimateMemory(C7, { mode: "half" as TrainMode, seq: 1, batch: 1 }),
    InvalidArgumentError,
  );
  assertThrows(() => estimateMemory(C7, { mode: "full", seq: 0, batch: 1 }), InvalidArgumentError);
  const bad: Partial<EstimateOptions>[] = [
    { rank: 0 },
    { optimizer: "sgd" as OptimizerKind },
    { backend: "tpu" as "cpu" },
    { targetModules: ["qkv_proj" as TargetModule] },
    { targetModules: [] },
  ];
  for (const o of bad) {
    assertThrows(
      () => estimateMemory(C7, { mode: "lora", seq: 1, batch: 1, ...o }),
      InvalidArgumentError,
      "Cannot estimate memory",
    );
  }
});

// ---- Validation: the estimate against the ledger, per category, at several shapes per mode ----------

/** One measured step beside its estimate. */
interface Row {
  label: string;
  shape: string;
  measured: Record<Category | "total", number>;
  estimated: Record<Category | "total", number>;
}

const rows: Row[] = [];
const TOLERANCE = 0.02;

/**
 * The error of the estimated step peak, the sum of the categories' peaks: an upper bound (plus oneDNN's
 * scratchpads), above the ledger's total by at most the workspace, which need not be live at the
 * activation peak. 0 inside those bounds, else the relative error.
 */
function totalError(measured: number, estimated: number, workspace: number): number {
  const lo = estimated - workspace, hi = estimated + UNMODELLED_SCRATCH;
  return measured >= lo && measured <= hi ? 0 : error(measured, measured < lo ? lo : hi);
}

/** The error of one category's (or the total's) estimate, as the validation judges it. */
function judged(c: Category | "total", r: Row): number {
  const m = r.measured[c], e = r.estimated[c];
  return c === "total"
    ? totalError(m, e, r.estimated.workspace)
    : c === "workspace"
    ? workspaceError(m, e)
    : error(m, e);
}

interface Setup {
  label: string;
  config: LlamaConfig;
  mode: TrainMode;
  dtype: "f32" | "bf16";
  rank?: number;
  targetModules?: TargetModule[];
  optimizer: OptimizerKind;
  masterWeights: boolean;
  /**
   * batch x seq, checkpointing, and optionally offloaded checkpoints and the LM head's chunk: the first
   * step also allocates the gradients, so its total is not compared.
   */
  shapes: Shape[];
}

type Shape = [number, number, boolean] | [number, number, boolean, { offload?: boolean; lossChunk?: number }];

/**
 * Builds the model once, runs one step (forward, backward, optimizer) per shape after a peak reset, and
 * requires every category's peak and, from the second step on, the total peak within 2% of the estimate.
 */
function validate(s: Setup): void {
  const device = getDevice();
  const backend = device.backend === "cpu" ? "cpu" : "cuda";
  const base = device.memory().totalCurrent;
  {
    using model = new LlamaModel(s.config, {
      mode: s.mode,
      dtype: s.dtype,
      rank: s.rank ?? 8,
      targetModules: s.targetModules,
    });
    const Opt = { adamw: AdamW, paged: PagedAdamW, "8bit": AdamW8bit }[s.optimizer];
    using opt = new Opt(model.trainables(), { masterWeights: s.masterWeights });
    s.shapes.forEach(([batch, seq, checkpointing, more], step) => {
      const ids = new Int32Array(batch * seq).map((_, i) => (i * 7 + 3) % s.config.vocabSize);
      using x = Tensor.from(ids, { shape: [batch, seq] });
      using y = Tensor.from(ids.map((t) => (t + 1) % s.config.vocabSize), { shape: [batch, seq] });
      model.checkpointing = checkpointing;
      model.offloadCheckpoints = more?.offload ?? false;
      model.lossChunk = more?.lossChunk ?? defaultLossChunk(s.config, s.dtype);
      model.zeroGrad();
      device.resetPeak();
      const host = device.memory().hostCurrent;
      model.forward(x, y);
      model.backward();
      opt.step();
      const snap = device.memory();
      const e = estimateMemory(s.config, {
        mode: s.mode,
        seq,
        batch,
        dtype: s.dtype,
        rank: s.rank ?? 8,
        targetModules: s.targetModules,
        checkpointing,
        offloadCheckpoints: more?.offload,
        lossChunk: more?.lossChunk,
        optimizer: s.optimizer,
        masterWeights: s.masterWeights,
        backend,
      });
      assert(
        error(snap.hostPeak - host, e.host) <= TOLERANCE,
        `${s.label} host pool: ledger ${snap.hostPeak - host}, estimate ${e.host}`,
      );
      assertEquals([model.parameters, model.trainableParameters], [e.parameters, e.trainable]);
      const shape = `${batch}x${seq}${checkpointing ? " ckpt" : ""}${more?.offload ? " offload" : ""}` +
        (more?.lossChunk ? ` chunk ${more.lossChunk}` : "");
      const row: Row = {
        label: s.label,
        shape,
        measured: { ...snap.peak, total: step > 0 ? snap.totalPeak : NaN },
        estimated: { ...e.bytes, total: e.peak },
      };
      rows.push(row);
      for (const c of CATEGORIES) {
        const err = c === "workspace"
          ? workspaceError(snap.peak[c], e.bytes[c])
          : error(snap.peak[c], e.bytes[c]);
        assert(err <= TOLERANCE, `${s.label} ${shape} ${c}: ledger ${snap.peak[c]}, estimate ${e.bytes[c]}`);
      }
      if (step > 0) {
        // The estimate's peak sums the categories' peaks: an upper bound (plus oneDNN's scratchpads), above
        // the ledger's total by at most the workspace, which need not be live at the activation peak.
        const err = totalError(snap.totalPeak, e.peak, e.bytes.workspace);
        assert(err <= TOLERANCE, `${s.label} ${shape} total: ledger ${snap.totalPeak}, estimate ${e.peak}`);
      }
    });
  }
  assertEquals(device.memory().totalCurrent, base);
}

const GQA: LlamaConfig = {
  vocabSize: 64,
  dim: 64,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  hiddenDim: 160,
  maxSeq: 64,
  normEps: 1e-5,
  ropeTheta: 10000,
};
const SMALL: Shape[] = [[1, 64, false], [2, 32, true], [3, 40, false], [4, 16, true]];
// Offloaded checkpoints and the LM head in chunks (a last chunk shorter than the others).
const LONG: Shape[] = [[1, 64, false], [2, 32, true, { offload: true }], [1, 64, false, { lossChunk: 10 }], [
  3,
  20,
  true,
  { offload: true, lossChunk: 7 },
]];

Deno.test("estimate: within 2% of the ledger per category, tiny and GQA models, every mode", () => {
  for (const mode of ["full", "lora", "qlora"] as const) {
    // The table's tiny runs: f32, AdamW (f32 weights have no master copies).
    validate({
      label: `tiny f32 ${mode}`,
      config: LLAMA_CONFIGS.tiny,
      mode,
      dtype: "f32",
      optimizer: "adamw",
      masterWeights: true,
      shapes: SMALL,
    });
    // Grouped-query attention in bf16, each optimizer, a subset of the targets.
    validate({
      label: `GQA bf16 ${mode}`,
      config: GQA,
      mode,
      dtype: "bf16",
      rank: 4,
      targetModules: mode === "lora" ? ["q_proj", "v_proj", "down_proj"] : undefined,
      optimizer: mode === "full" ? "8bit" : mode === "lora" ? "adamw" : "paged",
      masterWeights: mode !== "full",
      shapes: SMALL,
    });
    validate({
      label: `tiny bf16 ${mode}, offload and chunks`,
      config: LLAMA_CONFIGS.tiny,
      mode,
      dtype: "bf16",
      optimizer: "adamw",
      masterWeights: true,
      shapes: LONG,
    });
  }
});

// Real-size blocks are minutes under the CUDA emulator (deno task emu runs this suite there): CPU or GPU only.
const emulated = getDevice().backend === "cuda-emu";
const block7b = (layers: number): LlamaConfig => ({ ...C7, layers });

Deno.test({
  name: "estimate: within 2% of the ledger per category, real-size LLaMA-2-7B blocks (QLoRA, LoRA, full)",
  ignore: emulated,
  fn() {
    validate({
      label: "7B x2 qlora",
      config: block7b(2),
      mode: "qlora",
      dtype: "bf16",
      optimizer: "paged",
      masterWeights: true,
      shapes: [[1, 64, false], [2, 32, true], [1, 600, true, { offload: true }]],
    });
    validate({
      label: "7B x1 lora",
      config: block7b(1),
      mode: "lora",
      dtype: "bf16",
      optimizer: "adamw",
      masterWeights: true,
      shapes: [[2, 32, false], [1, 64, true]],
    });
    // Full fine-tuning of one block with its real embedding and LM head: 8-bit Adam keeps it at 2.8 GB.
    validate({
      label: "7B x1 full",
      config: block7b(1),
      mode: "full",
      dtype: "bf16",
      optimizer: "8bit",
      masterWeights: false,
      shapes: [[1, 64, false], [2, 32, true]],
    });
  },
});

Deno.test("estimate: the validation table (largest error per shape)", () => {
  const lines = ["| model | shape | " + [...CATEGORIES, "total"].join(" | ") + " | largest error |"];
  let worst = 0;
  for (const r of rows) {
    const cells = [...CATEGORIES, "total" as const].map((c) => {
      const m = r.measured[c], e = r.estimated[c];
      if (Number.isNaN(m)) return `(${e})`;
      return m === e ? `${m}` : `${m} / ${e}`;
    });
    const errs = [...CATEGORIES, "total" as const].filter((c) => !Number.isNaN(r.measured[c]))
      .map((c) => judged(c, r));
    const largest = Math.max(...errs);
    worst = Math.max(worst, largest);
    lines.push(`| ${r.label} | ${r.shape} | ${cells.join(" | ")} | ${(100 * largest).toFixed(3)}% |`);
  }
  console.log(lines.join("\n"));
  console.log(`largest error over ${rows.length} steps: ${(100 * worst).toFixed(3)}%`);
  assert(rows.length >= 24 && worst <= TOLERANCE);
});
