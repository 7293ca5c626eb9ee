// CPU/CUDA parity: the same inputs through the CPU backend and the CUDA backend's kernels give the same
// bits where both promise it (quantization, casts, fills, optimizer steps, embedding), and agree to float
// rounding elsewhere (GEMMs, model ops, training). The CUDA side is the real GPU where one is usable and
// else the emulated build of the same kernels (QLORA_BACKEND=cuda-emu, built by `make` with g++), so
// these tests run on every machine. Sizes are small and ragged: the emulator runs a GPU thread as a
// fiber, about 100x slower than the CPU backend.
import { assert, assertEquals, assertThrows } from "@std/assert";
import {
  AdamW,
  AdamW8bit,
  attentionBackward,
  attentionForward,
  axpby,
  backendAvailable,
  crossEntropy,
  type Device,
  dropout,
  dynamicMap,
  embeddingBackward,
  embeddingForward,
  fillUniform,
  getDevice,
  type LlamaConfig,
  LlamaModel,
  PagedAdamW,
  quantize,
  type QuantType,
  rmsnormBackward,
  rmsnormForward,
  rope,
  swigluBackward,
  swigluForward,
  Tensor,
  type TrainMode,
} from "../mod.ts";
import { type GemmError, gemmErrors } from "./_parity_gemm.ts";
import { assertBitEqual, normalValues } from "./_reference.ts";

const cpu = getDevice("cpu");
const gpu = backendAvailable("cuda") ? getDevice("cuda") : getDevice("cuda-emu");
const emulated = gpu.backend === "cuda-emu";
console.log(`parity: CPU against ${gpu.toString()}`);

const test = (name: string, fn: () => void | Promise<void>) => Deno.test({ name: `parity: ${name}`, fn });

/** Runs fn on both devices and returns both results as float arrays. */
function both(fn: (d: Device) => Tensor): [Float32Array, Float32Array] {
  using a = fn(cpu);
  using b = fn(gpu);
  return [a.toFloat32(), b.toFloat32()];
}

/**
 * Largest |a - b| relative to the largest |a|, or to 1e-3 where every |a| is smaller (an output that is
 * zero in exact arithmetic, such as dq at seq 1, is rounding noise on both backends).
 */
function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assertEquals(a.length, b.length);
  let err = 0, scale = 1e-3;
  for (let i = 0; i < a.length; i++) {
    err = Math.max(err, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(a[i]));
  }
  return err / scale;
}

function assertClose(a: ArrayLike<number>, b: ArrayLike<number>, tol: number, what: string): void {
  const e = relError(a, b);
  assert(e <= tol && Number.isFinite(e), `${what}: relative error ${e.toExponential(2)} above ${tol}`);
}

function assertBits(a: Float32Array, b: Float32Array, what: string): void {
  assertEquals(
    new Uint32Array(a.buffer, a.byteOffset, a.length),
    new Uint32Array(b.buffer, b.byteOffset, b.length),
    what,
  );
}

const TOL = { f32: 2e-5, bf16: 2e-2 } as const;

test("4-bit codes, constants and dequantized values are bit for bit the same", () => {
  const sizes = emulated
    ? [[65_536 + 77, 64], [10_003, 32], [70_000, 4096]]
    : [[1 << 20, 64], [100_003, 32], [70_000, 4096]];
  for (const quantType of ["nf4", "fp4", "int4"] as QuantType[]) {
    for (const dtype of ["f32", "bf16", "f16"] as const) {
      for (const [n, blocksize] of sizes) {
        const x = normalValues(n, n ^ blocksize, 0.02);
        using a32 = Tensor.from(x, { device: cpu });
        using b32 = Tensor.from(x, { device: gpu });
        using a = a32.cast(dtype);
        using b = b32.cast(dtype);
        assertBitEqual(a.toArray(), b.toArray(), "casts agree");
        using qa = quantize(a, { quantType, blocksize });
        using qb = quantize(b, { quantType, blocksize });
        const what = `${quantType} ${dtype} n=${n} bs=${blocksize}`;
        assertEquals(qa.packed.toArray(), qb.packed.toArray(), `${what}: packed`);
        assertEquals(qa.nested!.codes.toArray(), qb.nested!.codes.toArray(), `${what}: codes`);
        assertBitEqual(qa.nested!.absmax.toArray(), qb.nested!.absmax.toArray(), `${what}: nested absmax`);
        assertEquals(qa.nested!.offset, qb.nested!.offset, `${what}: offset`);
        for (const out of ["f32", "bf16", "f16"] as const) {
          using ra = qa.dequantize({ dtype: out });
          using rb = qb.dequantize({ dtype: out });
          assertBitEqual(ra.toArray(), rb.toArray(), `${what}: dequantized to ${out}`);
        }
      }
    }
  }
});

test("NaN in quantization input is the same error on both", () => {
  for (const d of [cpu, gpu]) {
    const x = normalValues(1000, 1, 1);
    x[777] = NaN;
    using t = Tensor.from(x, { device: d });
    assertThrows(() => quantize(t, { blocksize: 64 }), Error, "x[777] is NaN");
  }
});

test("maps and ledgers agree", () => {
  assertEquals(dynamicMap(cpu), dynamicMap(gpu));
  const before = gpu.memory();
  {
    using _t = Tensor.empty([1 << 16], { category: "weights", device: gpu });
    assertEquals(gpu.memory().current.weights - before.current.weights, 4 << 16);
  }
  assertEquals(gpu.memory().totalCurrent, before.totalCurrent);
  const snap = gpu.memory();
  assert(snap.deviceTotal > 0 && snap.deviceFree > 0, "driver figures missing");
  if (emulated) {
    // The emulated driver has no context of its own: at rest, what it has handed out is exactly what the
    // ledger counts (a stream-ordered scratch buffer that was never freed would show here).
    assertEquals(
      snap.deviceTotal - snap.deviceFree,
      snap.totalCurrent,
      "driver's used bytes = ledger's total",
    );
  }
});

test("fills, axpby and dropout: uniform, axpby, dropout bit for bit; normal to float rounding", () => {
  for (const dtype of ["f32", "bf16"] as const) {
    const n = 10_007;
    const [ua, ub] = both((d) => {
      const t = Tensor.empty([n], { dtype, device: d });
      fillUniform(t, -0.5, 1.5, 42);
      return t;
    });
    assertBits(ua, ub, `uniform ${dtype}`);
    const [na, nb] = both((d) => Tensor.randn([n], { seed: 9, dtype, device: d }));
    assertClose(na, nb, dtype === "f32" ? 1e-5 : 1e-2, `normal ${dtype}`);
    const x = normalValues(n, 3, 1), y = normalValues(n, 4, 1);
    const [aa, ab] = both((d) => {
      using tx32 = Tensor.from(x, { device: d });
      using tx = tx32.cast(dtype);
      using ty32 = Tensor.from(y, { device: d });
      const ty = ty32.cast(dtype);
      axpby(0.75, tx, -1.25, ty);
      return ty;
    });
    assertBits(aa, ab, `axpby ${dtype}`);
    const [da, db] = both((d) => {
      using tx32 = Tensor.from(x, { device: d });
      using tx = tx32.cast(dtype);
      return dropout(tx, 0.3, 11);
    });
    assertBits(da, db, `dropout ${dtype}`);
  }
});

test("GEMMs (cuBLAS path) and 4-bit products agree within f32 and bf16 tolerance", () => {
  for (const e of gemmErrors(gpu, cpu)) {
    assert(e.relError <= TOL[e.dtype] * 4, `${e.what}: relative error ${e.relError.toExponential(2)}`);
  }
});

test("GEMMs (built-in kernels, QLORA_GEMM=builtin in a second process) agree within tolerance", async () => {
  const script = new URL("./_parity_gemm.ts", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, gpu.backend],
    env: { QLORA_GEMM: "builtin" },
    stdout: "piped",
    stderr: "inherit",
  }).output();
  assert(out.success, "the built-in GEMM run failed");
  const result = JSON.parse(new TextDecoder().decode(out.stdout)) as { device: string; errors: GemmError[] };
  assert(result.device.includes("built-in kernels (QLORA_GEMM=builtin)"), result.device);
  for (const e of result.errors) {
    assert(e.relError <= TOL[e.dtype] * 4, `${e.what}: relative error ${e.relError.toExponential(2)}`);
  }
});

test("optimizer steps: AdamW, AdamW8bit and PagedAdamW are bit for bit the same over 3 steps", () => {
  for (const kind of ["adamw", "adamw8", "paged"] as const) {
    for (const dtype of ["f32", "bf16"] as const) {
      const results = [cpu, gpu].map((d) => {
        const n = 5_003;
        using p32 = Tensor.from(normalValues(n, 5, 0.1), { device: d });
        using p = p32.cast(dtype);
        using g32 = Tensor.from(normalValues(n, 6, 0.01), { device: d });
        using g = g32.cast(dtype);
        const params = [{ name: "w", value: p, grad: g }];
        using opt = kind === "adamw"
          ? new AdamW(params, { lr: 1e-2, weightDecay: 0.1, maxGradNorm: 0.5 })
          : kind === "adamw8"
          ? new AdamW8bit(params, { lr: 1e-2, weightDecay: 0.1 })
          : new PagedAdamW(params, { lr: 1e-2, weightDecay: 0.1, pageSize: 4096 });
        for (let s = 0; s < 3; s++) opt.step();
        return p.toFloat32();
      });
      assertBits(results[0], results[1], `${kind} ${dtype}`);
    }
  }
});

test("paged AdamW whose pages start in the host pool (device full) steps as on the CPU", () => {
  const results = [cpu, gpu].map((d) => {
    const n = 3_001;
    using p = Tensor.from(normalValues(n, 7, 0.1), { device: d });
    using g = Tensor.from(normalValues(n, 8, 0.01), { device: d });
    const budget = d.memory().budget;
    d.setMemoryBudget(d.memory().totalCurrent + 1024); // no room for any page: each starts on the host
    try {
      using opt = new PagedAdamW([{ name: "w", value: p, grad: g }], { lr: 1e-2, pageSize: 4096 });
      d.setMemoryBudget(budget);
      for (let s = 0; s < 2; s++) opt.step();
      return p.toFloat32();
    } finally {
      d.setMemoryBudget(budget);
    }
  });
  assertBits(results[0], results[1], "paged from host");
});

test("model ops forward and backward agree to float rounding (f32 and bf16)", () => {
  for (const dtype of ["f32", "bf16"] as const) {
    const tol = TOL[dtype];
    const on = (d: Device, values: Float32Array, shape: number[]) => {
      using t = Tensor.from(values, { shape, device: d });
      return t.cast(dtype);
    };
    // RMSNorm
    const rows = 37, dim = 72;
    const x = normalValues(rows * dim, 1, 1),
      w = normalValues(dim, 2, 1),
      dout = normalValues(rows * dim, 3, 1);
    const norm = [cpu, gpu].map((d) => {
      using tx = on(d, x, [rows, dim]);
      using tw = on(d, w, [dim]);
      using tdo = on(d, dout, [rows, dim]);
      const r = rmsnormForward(tx, tw);
      using out = r.out, rstd = r.rstd;
      using dweight = Tensor.zeros([dim], { dtype, device: d });
      using dx = rmsnormBackward(tdo, tx, tw, rstd, dweight);
      return [out.toFloat32(), dx.toFloat32(), dweight.toFloat32()];
    });
    for (let i = 0; i < 3; i++) assertClose(norm[0][i], norm[1][i], tol, `rmsnorm ${dtype} output ${i}`);
    // RoPE, then attention forward and backward (grouped-query), for head_dim 16 and 128, seq 1, 17 and 70.
    for (const [seq, headDim] of [[1, 16], [17, 16], [70, 128]]) {
      const s = { batch: 2, seq, heads: 4, kvHeads: 2, headDim };
      const qn = s.batch * seq * 4 * headDim, kn = s.batch * seq * 2 * headDim;
      const q = normalValues(qn, seq, 1), k = normalValues(kn, seq + 1, 1), v = normalValues(kn, seq + 2, 1);
      const dq = normalValues(qn, seq + 3, 1);
      const res = [cpu, gpu].map((d) => {
        using tq = on(d, q, [s.batch * seq, 4 * headDim]);
        using tk = on(d, k, [s.batch * seq, 2 * headDim]);
        using tv = on(d, v, [s.batch * seq, 2 * headDim]);
        using tdo = on(d, dq, [s.batch * seq, 4 * headDim]);
        rope(tq, { batch: s.batch, seq, heads: 4, headDim }, 10000, false);
        rope(tk, { batch: s.batch, seq, heads: 2, headDim }, 10000, false);
        const fwd = attentionForward(tq, tk, tv, s);
        using out = fwd.out, lse = fwd.lse;
        const g = attentionBackward(tdo, tq, tk, tv, fwd, s);
        using gq = g.dq, gk = g.dk, gv = g.dv;
        return [
          tq.toFloat32(),
          out.toFloat32(),
          lse.toFloat32(),
          gq.toFloat32(),
          gk.toFloat32(),
          gv.toFloat32(),
        ];
      });
      const names = ["rope q", "attention out", "lse", "dq", "dk", "dv"];
      for (let i = 0; i < names.length; i++) {
        const what = `${names[i]} ${dtype} seq ${seq} head_dim ${headDim}`;
        if (seq === 1 && (names[i] === "dq" || names[i] === "dk")) {
          // One key: the softmax is constant, so dq and dk are zero in exact arithmetic, rounding noise on both.
          for (const r of res) assert(r[i].every((v) => Math.abs(v) < 1e-4), `${what}: not ~0`);
        } else {
          assertClose(res[0][i], res[1][i], tol * 4, what);
        }
      }
    }
    // SwiGLU
    const n = 4_099, gate = normalValues(n, 9, 2), up = normalValues(n, 10, 1), gd = normalValues(n, 11, 1);
    const sw = [cpu, gpu].map((d) => {
      using tg = on(d, gate, [n]);
      using tu = on(d, up, [n]);
      using td = on(d, gd, [n]);
      using out = swigluForward(tg, tu);
      const g = swigluBackward(td, tg, tu);
      using dg = g.dgate, du = g.dup;
      return [out.toFloat32(), dg.toFloat32(), du.toFloat32()];
    });
    for (let i = 0; i < 3; i++) assertClose(sw[0][i], sw[1][i], tol, `swiglu ${dtype} ${i}`);
    // Embedding forward (bit for bit) and backward (bit for bit: the same sums in the same order), cross-entropy.
    const vocab = 50, edim = 24, tokens = Int32Array.from({ length: 61 }, (_, i) => (i * 37) % vocab);
    const table = normalValues(vocab * edim, 12, 1), edout = normalValues(61 * edim, 13, 1);
    const emb = [cpu, gpu].map((d) => {
      using tt = Tensor.from(tokens, { device: d });
      using table16 = on(d, table, [vocab, edim]);
      using rowsOut = embeddingForward(tt, table16);
      using ed = on(d, edout, [61, edim]);
      using dtable = Tensor.zeros([vocab, edim], { dtype, device: d });
      embeddingBackward(tt, ed, dtable);
      using logits = on(d, normalValues(61 * vocab, 14, 3), [61, vocab]);
      const targets = Int32Array.from(tokens, (t, i) => (i % 7 === 0 ? -1 : (t + 1) % vocab));
      using tg = Tensor.from(targets, { device: d });
      const ce = crossEntropy(logits, tg, true);
      return {
        rows: rowsOut.toFloat32(),
        dtable: dtable.toFloat32(),
        loss: [ce.loss],
        dlogits: logits.toFloat32(),
      };
    });
    assertBits(emb[0].rows, emb[1].rows, `embedding forward ${dtype}`);
    assertBits(emb[0].dtable, emb[1].dtable, `embedding backward ${dtype}`);
    assertClose(emb[0].loss, emb[1].loss, 1e-5, `cross-entropy loss ${dtype}`);
    assertClose(emb[0].dlogits, emb[1].dlogits, tol, `cross-entropy gradient ${dtype}`);
  }
});

const TINY: LlamaConfig = {
  vocabSize: 64,
  dim: 64,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  hiddenDim: 128,
  maxSeq: 32,
  normEps: 1e-5,
  ropeTheta: 10000,
};

test("three training steps of a tiny LLaMA give the same losses in full, LoRA and QLoRA modes", () => {
  for (const mode of ["full", "lora", "qlora"] as TrainMode[]) {
    const losses = [cpu, gpu].map((d) => {
      using model = new LlamaModel(TINY, { mode, seed: 5, std: 0.1, rank: 4, alpha: 8, device: d });
      const ids = Int32Array.from({ length: 2 * 25 }, (_, i) => (i * 29 + 3) % TINY.vocabSize);
      const inputs = new Int32Array(2 * 24), targets = new Int32Array(2 * 24);
      for (let b = 0; b < 2; b++) {
        for (let t = 0; t < 24; t++) {
          inputs[b * 24 + t] = ids[b * 25 + t];
          targets[b * 24 + t] = ids[b * 25 + t + 1];
        }
      }
      using x = Tensor.from(inputs, { shape: [2, 24], device: d });
      using y = Tensor.from(targets, { shape: [2, 24], device: d });
      using opt = mode === "qlora"
        ? new PagedAdamW(model.trainables(), { lr: 1e-2 })
        : new AdamW(model.trainables(), { lr: 1e-2 });
      const out: number[] = [];
      for (let s = 0; s < 3; s++) {
        out.push(model.forward(x, y));
        model.backward();
        opt.step();
        model.zeroGrad();
      }
      return out;
    });
    console.log(
      `parity: ${mode} losses cpu ${losses[0].map((l) => l.toFixed(6))} cuda ${
        losses[1].map((l) => l.toFixed(6))
      }`,
    );
    assertClose(losses[0], losses[1], 1e-4, `${mode} losses`);
    assert(losses[1][2] < losses[1][0], `${mode}: the loss falls on the CUDA side too`);
  }
});

/** Runs `code` (a module importing ../mod.ts as MOD) in a fresh Deno process with `env`; its stdout as JSON. */
async function inProcess(code: string, env: Record<string, string>): Promise<Record<string, unknown>> {
  const mod = new URL("../mod.ts", import.meta.url).href;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", code.replace("MOD", mod)],
    env,
    stdout: "piped",
    stderr: "inherit",
  }).output();
  assert(out.success, "the child process failed");
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

Deno.test({
  name: "parity: the driver's refusals: a device too small, and no device at all (emulated driver)",
  ignore: !emulated,
  fn: async () => {
    const small = await inProcess(
      `import { getDevice, Tensor } from "MOD";
       const d = getDevice("cuda-emu");
       let error = "";
       try { Tensor.empty([4 << 20], { device: d }); } catch (e) { error = e.name + ": " + e.message; }
       console.log(JSON.stringify({ error, total: d.memory().totalCurrent, deviceTotal: d.memory().deviceTotal }));`,
      { QLORA_EMU_DEVICE_MEMORY: "8MiB" },
    );
    assertEquals(small.deviceTotal, 8 << 20);
    assert(
      String(small.error).startsWith(
        "OutOfMemoryError: Cannot allocate 16.00 MiB of activations: the CUDA driver refused",
      ),
      String(small.error),
    );
    assertEquals(small.total, 0, "the refused allocation is not counted");
    const none = await inProcess(
      `import { getDevice } from "MOD";
       let error = "";
       try { getDevice("cuda-emu"); } catch (e) { error = e.name + ": " + e.message; }
       console.log(JSON.stringify({ error }));`,
      { QLORA_EMU_NO_DEVICE: "1" },
    );
    assert(
      String(none.error).startsWith(
        "BackendError: No usable CUDA device: cudaGetDeviceCount failed: cudaErrorNoDevice",
      ),
      String(none.error),
    );
  },
});
