import { assertEquals, assertNotEquals, assertThrows } from "@std/assert";
import { BatchSampler, fingerprint, InvalidArgumentError, loadCorpus, TextDataset } from "../mod.ts";
import { checkPositive } from "../lib/data/sampler.ts";

Deno.test("sampler: the batch sampler is deterministic for a seed, differs across seeds, targets shift by one", async () => {
  const data = TextDataset.fromText(await loadCorpus("moby-dick"));
  const opts = { batchSize: 8, seqLen: 128 };
  const s1 = data.batches({ ...opts, seed: 11 });
  const s2 = data.batches({ ...opts, seed: 11 });
  const s3 = data.batches({ ...opts, seed: 12 });
  for (let step = 0; step < 5; step++) {
    const [x, y, z] = [s1.sample(), s2.sample(), s3.sample()];
    assertEquals(x, y);
    assertNotEquals(x.inputs, z.inputs);
    assertEquals([x.batchSize, x.seqLen, x.inputs.length, x.targets.length], [8, 128, 1024, 1024]);
    for (let r = 0; r < 8; r++) {
      const row = x.inputs.subarray(r * 128, (r + 1) * 128);
      const next = x.targets.subarray(r * 128, (r + 1) * 128);
      assertEquals(row.subarray(1), next.subarray(0, 127));
    }
  }
  // With distinct tokens (0, 1, 2, ...) every target is its input plus one, and every start is reachable.
  const tokens = Int32Array.from({ length: 20 }, (_, i) => i);
  const s = new BatchSampler(tokens, { batchSize: 64, seqLen: 4, seed: 5 });
  const starts = new Set<number>();
  for (let i = 0; i < 10; i++) {
    const { inputs, targets } = s.sample();
    inputs.forEach((v, j) => assertEquals(targets[j], v + 1));
    for (let r = 0; r < 64; r++) starts.add(inputs[r * 4]);
  }
  assertEquals([...starts].sort((a, b) => a - b), [...Array(16).keys()]); // starts 0..15: 15 + 4 = 19 is last
  assertThrows(
    () => new BatchSampler(tokens, { batchSize: 1, seqLen: 20 }),
    InvalidArgumentError,
    "needs at least 21",
  );
  assertThrows(() => new BatchSampler(tokens, { batchSize: 0, seqLen: 2 }), InvalidArgumentError);
});

Deno.test("sampler: the shortest stream, its one window, a restored position, and what it refuses", () => {
  const tokens = Int32Array.from({ length: 9 }, (_, i) => 100 + i);
  const s = new BatchSampler(tokens, { batchSize: 2, seqLen: 8, seed: 4 });
  const { inputs, targets } = s.sample(); // seqLen + 1 tokens: one window only
  assertEquals([...inputs], [...tokens.subarray(0, 8), ...tokens.subarray(0, 8)]);
  assertEquals([...targets.subarray(0, 8)], [...tokens.subarray(1, 9)]);
  assertThrows(
    () => new BatchSampler(tokens, { batchSize: 1, seqLen: 9 }),
    InvalidArgumentError,
    "10 tokens",
  );
  assertThrows(
    () => new BatchSampler(tokens, { batchSize: 0, seqLen: 2 }),
    InvalidArgumentError,
    "batchSize",
  );
  assertThrows(() => s.setState({ drawn: -1, rng: s.getState().rng }), InvalidArgumentError, "drawn");
  assertThrows(() => checkPositive("seqLen", 2.5), InvalidArgumentError, "seqLen");
});

Deno.test("fingerprint: FNV-1a from its offset basis, order and array boundaries count", () => {
  assertEquals(fingerprint(), "811c9dc5"); // the FNV-1a 32-bit offset basis: nothing hashed
  assertEquals(fingerprint(new Int32Array([1, 2])), fingerprint(Int32Array.of(1, 2)));
  assertNotEquals(fingerprint(new Int32Array([1]), new Int32Array([2])), fingerprint(new Int32Array([1, 2])));
  assertNotEquals(
    fingerprint(new Int32Array([256])),
    fingerprint(new Int32Array([1])),
    "every byte of a value",
  );
  assertEquals(fingerprint(new Int32Array([-1])).length, 8);
});
