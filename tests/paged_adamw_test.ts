import { assert, assertEquals, assertThrows } from "@std/assert";
import { AdamW, getDevice, Linear, OutOfMemoryError, PagedAdamW, Tensor, type Trainable } from "../mod.ts";
import { assertBitEqual, normalValues } from "./_reference.ts";

const device = getDevice();

function trainable(name: string, value: Tensor, grad: Tensor): Trainable {
  return { name, value, grad };
}

Deno.test("PagedAdamW equals AdamW bit for bit under random eviction patterns", () => {
  const shapes = [[300, 7], [1000], [64, 64]];
  const make = () => shapes.map((s, i) => Tensor.randn(s, { seed: i, device, category: "weights" }));
  const a = make(), b = make();
  const grads = shapes.map((s) => Tensor.empty(s, { device, category: "gradients" }));
  try {
    using plain = new AdamW(a.map((t, i) => trainable(`p${i}`, t, grads[i])), { lr: 0.01, maxGradNorm: 1 });
    using paged = new PagedAdamW(b.map((t, i) => trainable(`p${i}`, t, grads[i])), {
      lr: 0.01,
      maxGradNorm: 1,
      pageSize: 1024, // 256 floats per page: many pages
    });
    let rng = 7;
    const random = () => (rng = (rng * 1103515245 + 12345) % 2147483648) / 2147483648;
    for (let step = 0; step < 8; step++) {
      grads.forEach((g, i) => g.copyFrom(normalValues(g.numel, 100 * step + i, 0.3)));
      // Squeeze: a budget just above what is in use, then an allocation that only fits if pages move.
      // The plain optimizer's m and v (8 bytes x 7196 parameters) stay; the rest of the states are pages.
      const pagedResident = device.memory().current.optimizer_states - 8 * 7196;
      if (random() < 0.6 && pagedResident > 0) {
        device.setMemoryBudget(device.memory().totalCurrent + 4096);
        try {
          const floats = 1024 + Math.floor((random() * pagedResident) / 4);
          const outs = paged.stats().pageOuts;
          using _spike = Tensor.empty([floats], { device });
          assert(floats * 4 <= 4096 || paged.stats().pageOuts > outs, "the spike made pages move");
        } finally {
          device.setMemoryBudget(0);
        }
      }
      if (random() < 0.3) paged.evictAll();
      plain.step();
      paged.step();
    }
    a.forEach((t, i) => assertBitEqual(b[i].toArray(), t.toArray(), `parameter ${i}`));
    const st = paged.stats();
    assert(st.pageOuts > 0 && st.pageIns > 0, JSON.stringify(st));
    assert(st.bytesIn <= st.bytesOut && st.pageIns <= st.pageOuts, "only evicted pages come back");
    assertEquals(st.resident + st.evicted, st.pages);
  } finally {
    for (const t of [...a, ...b, ...grads]) t.dispose();
  }
});

/**
 * The spike test: a full fine-tuning step whose activation spike does not fit next to the Adam states.
 * Without paging it is an OutOfMemoryError; with paging the states step aside and the step succeeds,
 * with parameters identical (bit for bit) to an unpaged run with no budget.
 */
Deno.test("spike: out of memory without paging, success with paging, same parameters", () => {
  const inp = 256, out = 256, tokens = 8;
  // 480 KB of activations for one step: more than the 256 KB of room, less than that plus the 512 KB of
  // Adam states that paging can move out of the way.
  const spikeFloats = 120_000;
  function run(kind: "plain" | "paged" | "unlimited"): Float32Array {
    using layer = new Linear(inp, out, { seed: 3, device });
    using x = Tensor.randn([tokens, inp], { seed: 4, device });
    const Opt = kind === "paged" ? PagedAdamW : AdamW;
    using opt = new Opt(layer.trainables(), { lr: 1e-2 });
    using warm = layer.forward(x);
    layer.backward(warm).dispose();
    opt.step(); // states are live and resident now
    if (kind !== "unlimited") {
      // Room for what is live plus 256 KB (the products' oneDNN scratchpads, about 130 KB, fit): the spike
      // needs far more, the Adam states (512 KB) would make room.
      device.setMemoryBudget(device.memory().totalCurrent + 262144);
    }
    try {
      using y = layer.forward(x);
      using spike = Tensor.empty([spikeFloats], { device, category: "activations" }); // e.g. a long sequence
      spike.copyFrom(new Float32Array(spikeFloats).fill(1e-3));
      layer.backward(y).dispose();
    } finally {
      device.setMemoryBudget(0);
    }
    opt.step();
    return layer.weight.toFloat32();
  }
  const e = assertThrows(() => run("plain"), OutOfMemoryError);
  assertEquals(e.details.category, "activations");
  assert(e.details.current.optimizer_states >= 2 * 4 * inp * out, "the states were in the way");
  const paged = run("paged");
  const unlimited = run("unlimited");
  assertBitEqual(paged, unlimited, "paged under a budget vs unlimited");
});
