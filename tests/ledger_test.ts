import { assert, assertEquals, assertGreater, assertThrows } from "@std/assert";
import {
  CATEGORIES,
  formatBytes,
  getDevice,
  InvalidArgumentError,
  JUPYTER_DISPLAY,
  OutOfMemoryError,
  parseBytes,
  quantize,
  Tensor,
} from "../mod.ts";

const device = getDevice();

Deno.test("ledger: every category counts exactly the bytes allocated, and returns to zero", () => {
  const start = device.memory();
  const tensors = CATEGORIES.map((category, i) => Tensor.empty([1000 + i], { category, device }));
  const mid = device.memory();
  CATEGORIES.forEach((c, i) => assertEquals(mid.current[c] - start.current[c], 4 * (1000 + i), c));
  assertEquals(mid.liveAllocations - start.liveAllocations, CATEGORIES.length);
  for (const t of tensors) t.dispose();
  const end = device.memory();
  assertEquals(end.totalCurrent, start.totalCurrent);
  assertEquals(end.liveAllocations, start.liveAllocations);
});

Deno.test("ledger: a quantized tensor is counted as quantized_weights and quant_constants", () => {
  const before = device.memory();
  using w = Tensor.randn([1024, 512], { category: "weights", dtype: "bf16", device });
  using q = quantize(w);
  const snap = device.memory();
  assertEquals(snap.current.quantized_weights - before.current.quantized_weights, 1024 * 512 / 2);
  const blocks = 1024 * 512 / 64;
  assertEquals(snap.current.quant_constants - before.current.quant_constants, blocks + 4 * (blocks / 256));
  assertEquals(q.bytes.constants, blocks + 4 * (blocks / 256) + 4);
});

Deno.test("ledger: peak follows the high-water mark and resets on demand", () => {
  device.resetPeak();
  const base = device.memory().totalCurrent;
  {
    using _big = Tensor.empty([1 << 20], { category: "workspace", device });
  }
  const after = device.memory();
  assertEquals(after.totalPeak - base, 4 << 20);
  assertGreater(after.peak.workspace, 0);
  device.resetPeak();
  assertEquals(device.memory().totalPeak, base);
});

Deno.test("budget: an allocation past it is an OutOfMemoryError naming request, budget and ledger", () => {
  using keep = Tensor.empty([1 << 18], { category: "weights", device }); // 1 MiB
  const inUse = device.memory().totalCurrent;
  device.setMemoryBudget(inUse + (2 << 20));
  try {
    using ok = Tensor.empty([1 << 18], { category: "activations", device });
    assert(!ok.disposed);
    const e = assertThrows(
      () => Tensor.empty([1 << 20], { category: "activations", device }),
      OutOfMemoryError,
    );
    assertEquals(e.details.requested, 4 << 20);
    assertEquals(e.details.category, "activations");
    assertEquals(e.details.budget, inUse + (2 << 20));
    assertGreater(e.details.current.weights, 0);
    for (const part of ["4.00 MiB", "activations", "budget", "weights"]) {
      assert(e.message.includes(part), e.message);
    }
    assertEquals(device.memory().totalCurrent, inUse + (1 << 20), "the failed request left nothing behind");
  } finally {
    device.setMemoryBudget(0);
  }
  assert(!keep.disposed);
  using fine = Tensor.empty([1 << 20], { device });
  assertEquals(fine.byteLength, 4 << 20);
});

Deno.test("budget: parses human sizes and rejects nonsense", () => {
  assertEquals(parseBytes("6GiB"), 6 * 2 ** 30);
  assertEquals(parseBytes("512 MiB"), 512 * 2 ** 20);
  assertEquals(parseBytes("1.5GB"), 1.5e9);
  assertThrows(() => parseBytes("six gigs"), InvalidArgumentError);
  assertThrows(() => device.setMemoryBudget(-1), InvalidArgumentError);
  assertEquals(formatBytes(6 * 2 ** 30), "6.00 GiB");
});

Deno.test("ledger snapshot renders in Jupyter and as text", () => {
  const snap = device.memory();
  const bundle = snap[JUPYTER_DISPLAY]();
  assert(bundle["text/html"].includes("<table>"));
  assert(snap.toString().includes("total"));
});
