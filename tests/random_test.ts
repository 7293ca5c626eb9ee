import { assert, assertEquals, assertNotEquals, assertThrows } from "@std/assert";
import { InvalidArgumentError, Xorshift128 } from "../mod.ts";

Deno.test("random: Xorshift128 is deterministic per seed, uniform enough, and seeds differ", () => {
  const draw = (seed: number) => {
    const r = new Xorshift128(seed);
    return Array.from({ length: 8 }, () => r.nextUint32());
  };
  assertEquals(draw(1), draw(1));
  assertNotEquals(draw(1), draw(2));
  assertNotEquals(draw(0), draw(2 ** 32)); // high bits of the seed count
  assertNotEquals(draw(-1), draw(1));
  // Pinned: the sequence must not change between versions, or saved runs stop being reproducible.
  assertEquals(draw(0).slice(0, 3), PINNED_SEED0);
  const r = new Xorshift128(3);
  const counts = new Array(10).fill(0);
  for (let i = 0; i < 100_000; i++) counts[r.nextInt(10)]++;
  assert(counts.every((c) => Math.abs(c - 10_000) < 500), `counts ${counts}`);
  for (let i = 0; i < 1000; i++) {
    const f = r.nextFloat();
    assert(f >= 0 && f < 1);
  }
  assertEquals(r.shuffle([1, 2, 3, 4, 5]).sort(), [1, 2, 3, 4, 5]);
  assertThrows(() => new Xorshift128(0.5), InvalidArgumentError);
  assertThrows(() => r.nextInt(0), InvalidArgumentError);
});

const PINNED_SEED0 = [2407135599, 70998536, 3162094942];
