import { assert, assertEquals, assertThrows } from "@std/assert";
import { getDevice, InvalidArgumentError, measureLinearSpeed } from "../mod.ts";

const device = getDevice();

Deno.test("measureLinearSpeed: a row per token count, positive times, the speedups their ratios", () => {
  const before = device.memory().totalCurrent;
  const speed = measureLinearSpeed(device, [70, 256], [1, 9, 40], { reps: 2, maxMsPerCase: 200 });
  assertEquals(speed.shape, [70, 256]);
  assertEquals(speed.rows.map((r) => r.tokens), [1, 9, 40]);
  for (const r of speed.rows) {
    for (const t of [r.bf16Ms, r.fusedMs, r.dequantizeMs]) assert(Number.isFinite(t) && t > 0, `${t} ms`);
    assertEquals(r.fusedSpeedup, r.bf16Ms / r.fusedMs);
    assertEquals(r.dequantizeSpeedup, r.bf16Ms / r.dequantizeMs);
  }
  // NF4 with double quantization at blocksize 64: 4 + 8/64 + 32/(64 * 256) bits a weight (70 * 256 values
  // make 280 blocks, two nested blocks: the last one partial, so a little more).
  assert(speed.bitsPerWeight > 4.127 && speed.bitsPerWeight < 4.2, `${speed.bitsPerWeight}`);
  assertEquals(speed.idealDecodeSpeedup, 16 / speed.bitsPerWeight);
  assertEquals(device.memory().totalCurrent, before, "every buffer freed");
});

Deno.test("measureLinearSpeed: plain constants are 4.5 bits a weight", () => {
  const speed = measureLinearSpeed(device, [64, 128], [2], {
    reps: 1,
    doubleQuant: false,
    quantType: "int4",
  });
  assertEquals(speed.bitsPerWeight, 4.5);
});

Deno.test("measureLinearSpeed: bad sizes are refused before anything is allocated", () => {
  assertThrows(() => measureLinearSpeed(device, [0, 64], [1]), InvalidArgumentError, "out must be");
  assertThrows(() => measureLinearSpeed(device, [64, 64], [1, 2.5]), InvalidArgumentError, "tokens must be");
  assertThrows(
    () => measureLinearSpeed(device, [64, 64], [1], { copies: 0 }),
    InvalidArgumentError,
    "copies must be",
  );
});
