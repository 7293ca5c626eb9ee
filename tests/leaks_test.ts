// No leak on any failure path: for each public operation, the memory budget is swept across the bytes the
// operation allocates (so that it fails at each of its allocations in turn), and after every failure the
// ledger must be back where it started; the operation must also fail with OutOfMemoryError, never another
// error for a shortage. Then failures other than memory: a disposed input, an out-of-range target.
import { assert, assertEquals, assertThrows } from "@std/assert";
import {
  AdamW,
  attentionBackward,
  attentionForward,
  crossEntropy,
  type Device,
  DisposedError,
  dropout,
  getDevice,
  Linear,
  LlamaModel,
  LoRALinear,
  matmul,
  matmul4bit,
  OutOfMemoryError,
  PagedAdamW,
  quantize,
  rmsnormBackward,
  rmsnormForward,
  swigluForward,
  Tensor,
} from "../mod.ts";

const device = getDevice();

/**
 * Runs `op` (which disposes what it makes on success) once without a budget to learn how much it
 * allocates, then again under budgets from the current total up to that peak, in `levels` steps.
 * Returns the number of failures seen; every one must leave the ledger as it was.
 */
function sweep(name: string, op: () => void, d: Device = device, levels = 24): number {
  op(); // a first run allocates what persists (gradients kept between steps), which is not a leak
  const start = d.memory().totalCurrent;
  d.resetPeak();
  op();
  assertEquals(d.memory().totalCurrent, start, `${name}: the ledger returns to its start after success`);
  const need = d.memory().totalPeak - start;
  let failures = 0;
  for (let i = 0; i < levels; i++) {
    const headroom = Math.floor((need * i) / levels);
    d.setMemoryBudget(start + headroom + 1);
    try {
      op();
    } catch (e) {
      failures++;
      if (!(e instanceof OutOfMemoryError)) {
        throw new Error(`${name} at +${headroom} B: ${e} (not OutOfMemoryError)`);
      }
    } finally {
      d.setMemoryBudget(0);
    }
    assertEquals(
      d.memory().totalCurrent,
      start,
      `${name}: leak after failing at budget +${headroom} of ${need} B`,
    );
  }
  return failures;
}

const sizes = { m: 16, k: 96, n: 64 };

Deno.test("leaks: tensors, casts, products, dropout and quantization free everything when they fail", () => {
  using x = Tensor.randn([sizes.m, sizes.k], { seed: 1 });
  using w = Tensor.randn([sizes.n, sizes.k], { seed: 2, std: 0.05 });
  using q = quantize(w);
  const report: string[] = [];
  const ops: [string, () => void][] = [
    ["clone", () => x.clone().dispose()],
    ["cast", () => x.cast("bf16").dispose()],
    ["matmul", () => matmul(x, w, { transB: true }).dispose()],
    ["matmul4bit", () => matmul4bit(x, q, { transW: true }).dispose()],
    ["dropout", () => dropout(x, 0.1, 3).dispose()],
    ["quantize", () => quantize(w).dispose()],
    ["dequantize", () => q.dequantize().dispose()],
  ];
  for (const [name, op] of ops) report.push(`${name} ${sweep(name, op)}`);
  console.log(`leaks: failures swept: ${report.join(", ")}`);
});

Deno.test("leaks: layers and model ops free everything when they fail", () => {
  using x = Tensor.randn([sizes.m, sizes.k], { seed: 1 });
  using dy = Tensor.randn([sizes.m, sizes.n], { seed: 3 });
  using w = Tensor.randn([sizes.n, sizes.k], { seed: 2, std: 0.05 });
  using linear = new Linear(sizes.k, sizes.n);
  using lora = LoRALinear.fromWeight(w, { rank: 4, base: "f32", dropout: 0.1 });
  using qlora = LoRALinear.fromWeight(w, { rank: 4, base: "nf4", doubleQuant: true, computeDtype: "f32" });
  const s = { batch: 2, seq: 8, heads: 4, kvHeads: 2, headDim: 8 };
  using q = Tensor.randn([16, 32], { seed: 4 }), k = Tensor.randn([16, 16], { seed: 5 });
  using v = Tensor.randn([16, 16], { seed: 6 }), g = Tensor.randn([16, 32], { seed: 7 });
  using nw = Tensor.randn([sizes.k], { seed: 8 });
  using logits = Tensor.randn([sizes.m, 40], { seed: 9 });
  using targets = Tensor.from(new Int32Array(sizes.m).map((_, i) => i % 40));
  const report: string[] = [];
  const ops: [string, () => void][] = [
    ["Linear forward+backward", () => {
      linear.forward(x).dispose();
      linear.backward(dy, { inputGrad: true })?.dispose();
      linear.zeroGrad();
    }],
    ["LoRALinear (f32) forward+backward", () => {
      lora.forward(x).dispose();
      lora.backward(dy)?.dispose();
    }],
    ["LoRALinear (nf4) forward+backward", () => {
      qlora.forward(x).dispose();
      qlora.backward(dy)?.dispose();
    }],
    ["rmsnorm", () => {
      const r = rmsnormForward(x, nw);
      try {
        rmsnormBackward(x, x, nw, r.rstd, null).dispose();
      } finally {
        r.out.dispose(), r.rstd.dispose();
      }
    }],
    ["attention", () => {
      const f = attentionForward(q, k, v, s);
      try {
        const b = attentionBackward(g, q, k, v, f, s);
        b.dq.dispose(), b.dk.dispose(), b.dv.dispose();
      } finally {
        f.out.dispose(), f.lse.dispose();
      }
    }],
    ["swiglu", () => swigluForward(q, g).dispose()],
    ["cross-entropy", () => {
      using l = logits.clone();
      crossEntropy(l, targets, true);
    }],
  ];
  for (const [name, op] of ops) report.push(`${name} ${sweep(name, op)}`);
  console.log(`leaks: failures swept: ${report.join(", ")}`);
});

const TINY = {
  vocabSize: 40,
  dim: 32,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  hiddenDim: 48,
  maxSeq: 16,
  normEps: 1e-5,
  ropeTheta: 10000,
};

Deno.test("leaks: the model's constructor, forward and backward, and the optimizers' first step", () => {
  const tokens = new Int32Array(2 * 12).map((_, i) => (i * 7) % TINY.vocabSize);
  using x = Tensor.from(tokens, { shape: [2, 12] });
  using y = Tensor.from(tokens.map((t) => (t + 1) % TINY.vocabSize), { shape: [2, 12] });
  const report: string[] = [];
  for (const mode of ["full", "lora", "qlora"] as const) {
    report.push(
      `${mode} constructor ${
        sweep(
          `${mode} constructor`,
          () => new LlamaModel(TINY, { mode, rank: 4 }).dispose(),
          device,
          16,
        )
      }`,
    );
    using model = new LlamaModel(TINY, { mode, rank: 4 });
    report.push(`${mode} step ${
      sweep(
        `${mode} forward+backward`,
        () => {
          try {
            model.forward(x, y);
            model.backward();
          } finally {
            model.releaseActivations();
          }
        },
        device,
        16,
      )
    }`);
  }
  for (const kind of ["adamw", "paged"] as const) {
    report.push(`${kind} ${
      sweep(
        kind,
        () => {
          using layer = new Linear(64, 64);
          using gx = Tensor.randn([4, 64]);
          layer.forward(gx).dispose();
          using gdy = Tensor.randn([4, 64]);
          layer.backward(gdy, { inputGrad: false });
          using opt = kind === "adamw"
            ? new AdamW(layer.trainables())
            : new PagedAdamW(layer.trainables(), { pageSize: 4096 });
          opt.step();
        },
        device,
        16,
      )
    }`);
  }
  console.log(`leaks: failures swept: ${report.join(", ")}`);
});

Deno.test("leaks: a disposed input or an out-of-range target fails without leaving anything counted", () => {
  const start = device.memory().totalCurrent;
  const dead = Tensor.randn([4, 8]);
  dead.dispose();
  using w = Tensor.randn([8, 8]);
  using linear = new Linear(8, 8);
  for (
    const op of [
      () => dead.clone(),
      () => dead.cast("bf16"),
      () => matmul(dead, w),
      () => dropout(dead, 0.1, 1),
      () => linear.forward(dead),
    ]
  ) {
    assertThrows(op, DisposedError);
  }
  assertEquals(
    device.memory().totalCurrent,
    start + w.byteLength + linear.weight.byteLength,
    "nothing left by the failures",
  );
  {
    using model = new LlamaModel(TINY, { mode: "lora", rank: 4 });
    const before = device.memory().totalCurrent;
    using x = Tensor.from(new Int32Array(8).fill(1), { shape: [1, 8] });
    using y = Tensor.from(new Int32Array(8).fill(TINY.vocabSize), { shape: [1, 8] }); // out of range
    assertThrows(() => model.forward(x, y));
    model.releaseActivations();
    assertEquals(
      device.memory().totalCurrent,
      before + x.byteLength + y.byteLength,
      "forward with a bad target",
    );
  }
  assert(device.memory().totalCurrent >= start);
});

Deno.test("leaks: with the budget lowered below current use, the pressure handlers are asked for what is really missing", () => {
  const asked: number[] = [];
  const remove = device.onMemoryPressure((bytes) => (asked.push(bytes), 0));
  using held = Tensor.empty([1 << 16]); // 256 KiB in use
  try {
    device.setMemoryBudget(device.memory().totalCurrent - 100_000);
    assertThrows(() => Tensor.empty([1000]), OutOfMemoryError);
    assertEquals(asked, [100_000 + 4000], "the excess over the budget plus the request");
  } finally {
    device.setMemoryBudget(0);
    remove();
  }
  assert(held.numel > 0);
});
