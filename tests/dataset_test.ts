import { assert, assertEquals, assertNotEquals, assertThrows } from "@std/assert";
import { InvalidArgumentError, loadDocuments, TextDataset } from "../mod.ts";

const utf8Length = (s: string) => new TextEncoder().encode(s).length;

Deno.test("dataset: fromDocuments splits by document, deterministic for a seed, disjoint and complete", async () => {
  const docs = await loadDocuments("brown");
  const a = TextDataset.fromDocuments(docs, { seed: 1 });
  const b = TextDataset.fromDocuments(docs, { seed: 1 });
  const c = TextDataset.fromDocuments(docs, { seed: 2 });
  assertEquals(a.split, b.split);
  assertEquals(a.train, b.train);
  assertEquals(a.validation, b.validation);
  assertNotEquals(a.split!.validation, c.split!.validation);
  assertEquals(a.split!.validation.length, 50);
  const all = [...a.split!.train, ...a.split!.validation].sort((x, y) => x - y);
  assertEquals(all, [...Array(500).keys()]);
  assertEquals(new Set(all).size, 500);
  // The streams are exactly the framed documents of each part, in order.
  const tok = a.tokenizer;
  const expectedLength = (idx: number[]) => idx.reduce((s, i) => s + utf8Length(docs[i].text) + 2, 0);
  assertEquals(a.train.length, expectedLength(a.split!.train));
  assertEquals(a.validation.length, expectedLength(a.split!.validation));
  const firstVal = docs[a.split!.validation[0]].text;
  assertEquals(tok.decode(a.validation.subarray(0, utf8Length(firstVal) + 2)), firstVal);
  assertEquals(a.validation[0], tok.bos);
  assert(a.toString().includes("450 + 50 documents"));
  // Edge cases: a fraction of 0 keeps everything for training; two documents give one to validation.
  assertEquals(TextDataset.fromDocuments(["x", "y"], { validationFraction: 0 }).validation.length, 0);
  assertEquals(
    TextDataset.fromDocuments(["x", "y"], { validationFraction: 0.01 }).split!.validation.length,
    1,
  );
  assertThrows(() => TextDataset.fromDocuments(["x"], { validationFraction: 1 }), InvalidArgumentError);
});

Deno.test("dataset: fromText holds out the end of the text, cut at a line start", () => {
  const text = Array.from({ length: 100 }, (_, i) => `line ${i} — ünïcode`).join("\n");
  const d = TextDataset.fromText(text, { validationFraction: 0.1 });
  const tok = d.tokenizer;
  const train = tok.decode(d.train);
  const validation = tok.decode(d.validation);
  assertEquals(train + validation, text);
  assert(validation.startsWith("line 9"), validation.slice(0, 20));
  assert(Math.abs(validation.length / text.length - 0.1) < 0.02);
  assertEquals([d.train[0], d.train.at(-1), d.validation[0], d.validation.at(-1)], [257, 258, 257, 258]);
  assertEquals(TextDataset.fromText(text, { validationFraction: 0.1 }).validation, d.validation);
  assertEquals(TextDataset.fromText(text, { validationFraction: 0 }).validation.length, 0);
});

Deno.test("dataset: validation batches cover non-overlapping windows in order, the last batch smaller", () => {
  const data = TextDataset.fromText("abcdefghijklmnopqrstuvwxyz".repeat(10), { validationFraction: 0.5 });
  const seqLen = 5;
  const windows = data.validationWindows(seqLen);
  assertEquals(windows, Math.floor((data.validation.length - 1) / seqLen));
  const batches = [...data.validationBatches({ batchSize: 3, seqLen })];
  assert(windows % 3 !== 0, "the text is chosen so that the last batch is partial");
  assertEquals(batches.map((b) => b.batchSize), [...Array(Math.floor(windows / 3)).fill(3), windows % 3]);
  const inputs = new Int32Array(batches.flatMap((b) => [...b.inputs]));
  const targets = new Int32Array(batches.flatMap((b) => [...b.targets]));
  assertEquals(inputs, data.validation.subarray(0, windows * seqLen));
  assertEquals(targets, data.validation.subarray(1, windows * seqLen + 1));
  assertEquals([...data.validationBatches({ batchSize: 3, seqLen: 1000 })].length, 0);
});
