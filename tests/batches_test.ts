import { assertEquals, assertThrows } from "@std/assert";
import { datasetSource, InvalidArgumentError, TextDataset } from "../mod.ts";

Deno.test("datasetSource: seeded, resumable batches and a fingerprint of the data", () => {
  const data = TextDataset.fromText("abcdefghij".repeat(40), { validationFraction: 0.2 });
  const a = datasetSource(data, 3), b = datasetSource(data, 3);
  const first = a.trainBatch(2, 8);
  assertEquals(first.inputs, b.trainBatch(2, 8).inputs);
  assertEquals(first.targets.subarray(0, 7), first.inputs.subarray(1, 8));
  const described = a.describe?.() as { fingerprint: string; trainTokens: number };
  assertEquals(described.trainTokens, data.train.length);
  assertEquals(described.fingerprint, (b.describe?.() as { fingerprint: string }).fingerprint);
  assertEquals(a.validationBatches(2, 8, 1).length, 1);
});

Deno.test("datasetSource: a restored position continues the stream; a bad position is refused", () => {
  const data = TextDataset.fromText("the quick brown fox jumps over the lazy dog. ".repeat(30));
  const a = datasetSource(data, 5);
  a.trainBatch(2, 8);
  a.trainBatch(1, 4); // two streams, one per batch shape
  const saved = JSON.parse(JSON.stringify(a.getState!())); // as a checkpoint stores it
  const next = [a.trainBatch(2, 8).inputs, a.trainBatch(1, 4).inputs];
  const b = datasetSource(data, 5);
  b.setState!(saved);
  assertEquals([b.trainBatch(2, 8).inputs, b.trainBatch(1, 4).inputs], next);
  assertThrows(() => b.setState!({ "2by8": {} }), InvalidArgumentError, "bad sampler key 2by8");
});
