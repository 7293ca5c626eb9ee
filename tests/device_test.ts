import { assert, assertEquals, assertInstanceOf, assertStringIncludes, assertThrows } from "@std/assert";
import {
  backendAvailable,
  getDevice,
  InvalidArgumentError,
  memory,
  OutOfMemoryError,
  setMemoryBudget,
  Tensor,
} from "../mod.ts";

const device = getDevice("cpu");

Deno.test("device: one Device per library, whatever name it is asked by", () => {
  assert(getDevice("cpu") === device);
  assert(backendAvailable("cpu"));
  assertEquals(device.backend, "cpu");
  assert(device.name.startsWith("CPU"), device.name);
  assertEquals(String(device), `cpu: ${device.name}`);
  assertEquals(backendAvailable("nonsense" as "cpu"), false);
});

Deno.test("device: a budget in bytes or text, an OutOfMemoryError with the request and the ledger", () => {
  setMemoryBudget("1MiB", device);
  try {
    assertEquals(memory(device).budget, 2 ** 20);
    device.setMemoryBudget(device.memory().totalCurrent + 4096);
    using fits = Tensor.empty([1024], { device }); // exactly the 4 KiB left
    const e = assertThrows(() => Tensor.empty([1], { device, category: "gradients" }), OutOfMemoryError);
    assertInstanceOf(e, OutOfMemoryError);
    assertEquals([e.details.requested, e.details.category], [4, "gradients"]);
    assertEquals(e.details.budget, device.memory().budget);
    assertEquals(e.details.totalCurrent, device.memory().totalCurrent);
    assert(fits.byteLength === 4096);
  } finally {
    device.setMemoryBudget(0);
  }
  assertEquals(device.memory().budget, 0);
  assertThrows(() => device.setMemoryBudget(-1), InvalidArgumentError);
  assertThrows(() => device.setMemoryBudget(1.5), InvalidArgumentError);
  assertThrows(() => device.allocate(0, "workspace"), InvalidArgumentError, "positive");
  assertThrows(() => device.allocate(8, "cache" as "workspace"), InvalidArgumentError, "cache");
});

Deno.test("device: pressure handlers are asked for what is missing, and the allocation is retried", () => {
  const held: Tensor[] = [Tensor.empty([4096], { device }), Tensor.empty([4096], { device })];
  const asked: number[] = [];
  const remove = device.onMemoryPressure((needed) => {
    asked.push(needed);
    const t = held.pop();
    if (!t) return 0;
    t.dispose();
    return 4 * 4096;
  });
  device.setMemoryBudget(device.memory().totalCurrent + 100);
  try {
    using big = Tensor.empty([4096], { device }); // 16 KiB: one handler call frees 16 KiB
    assertEquals(asked, [4 * 4096]);
    assertEquals(held.length, 1);
    assert(big.byteLength === 4 * 4096);
  } finally {
    device.setMemoryBudget(0);
    remove();
    for (const t of held) t.dispose();
  }
  device.setMemoryBudget(device.memory().totalCurrent + 100);
  try {
    assertThrows(
      () => Tensor.empty([4096], { device }),
      OutOfMemoryError,
      undefined,
      "a removed handler is not asked",
    );
    assertEquals(asked.length, 1);
  } finally {
    device.setMemoryBudget(0);
  }
});

Deno.test("device: peaks follow allocations and resetPeak brings them down to the current value", () => {
  device.resetPeak();
  const start = device.memory();
  assertEquals(start.totalPeak, start.totalCurrent);
  const t = Tensor.empty([1 << 16], { device, category: "workspace" });
  t.dispose();
  const after = device.memory();
  assertEquals(after.totalCurrent, start.totalCurrent);
  assertEquals(after.peak.workspace - start.peak.workspace >= 4 << 16, true);
  device.resetPeak();
  assertEquals(device.memory().totalPeak, device.memory().totalCurrent);
  device.synchronize();
});

Deno.test("device: QLORA_CPU_ISA=avx2 runs the CPU backend as on a CPU without AVX-512; other values are refused", async () => {
  const root = new URL("..", import.meta.url).pathname;
  const describe = async (isa: string) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", 'import { getDevice } from "./mod.ts"; console.log(String(getDevice("cpu")));'],
      cwd: root,
      env: { QLORA_BACKEND: "cpu", QLORA_CPU_ISA: isa },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    return { code: out.code, text: dec.decode(out.stdout) + dec.decode(out.stderr) };
  };
  const avx2 = await describe("avx2");
  assertEquals(avx2.code, 0, avx2.text);
  assertStringIncludes(avx2.text, "AVX2 only: QLORA_CPU_ISA=avx2");
  const native = await describe("native");
  assertEquals(native.code, 0, native.text);
  assert(!native.text.includes("AVX2"), native.text);
  const bad = await describe("sse2");
  assert(bad.code !== 0, bad.text);
  assertStringIncludes(bad.text, 'QLORA_CPU_ISA must be native or avx2, got "sse2"');
});
