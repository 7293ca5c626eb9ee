/**
 * Fine-tuning data as people bring it: JSON Lines of `{"text": ...}` (language modelling) or
 * `{"prompt": ..., "completion": ...}` (the loss on the completion only), turned into the next-token
 * batches of {@linkcode Trainer} for any {@linkcode Tokenizer}.
 *
 * - Only `text` examples: the texts are one stream of documents, windows sampled as for the bundled
 *   corpora ({@linkcode TextDataset}), so long texts are used whole.
 * - Any `prompt`/`completion` example: each example is one sequence, `[BOS] prompt completion EOS`,
 *   truncated to the window (the prompt's start is kept) or padded; targets are -1 on the prompt and the
 *   padding. A `text` example among them is a completion with an empty prompt.
 *
 * @module
 */

import { TextDataset } from "./dataset.ts";
import { InvalidArgumentError, Xorshift128 } from "../base/mod.ts";
import { fingerprint, type SamplerState } from "./sampler.ts";
import { encodePair, type Tokenizer } from "./tokenizer.ts";
import { type BatchSource, datasetSource, type TokenBatch } from "./batches.ts";

/** One training example. */
export type Example = { text: string } | { prompt: string; completion: string };

/**
 * Parses JSON Lines of examples; blank lines are skipped. A line that is not an object with a string
 * `text`, or string `prompt` and `completion`, is an error naming the line.
 *
 * @example
 * ```ts
 * import { parseExamples } from "./examples.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 * const ex = parseExamples('{"text": "a"}\n\n{"prompt": "Q: ", "completion": "A"}\n', "data.jsonl");
 * assertEquals(ex.length, 2);
 * assertThrows(() => parseExamples('{"txt": 1}', "data.jsonl"), Error, "data.jsonl:1");
 * ```
 */
export function parseExamples(text: string, source = "examples"): Example[] {
  const out: Example[] = [];
  text.split("\n").forEach((line, i) => {
    if (line.trim() === "") return;
    const where = `${source}:${i + 1}`;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      throw new InvalidArgumentError(`Cannot read ${where}: ${(e as Error).message}`);
    }
    const o = v as Record<string, unknown>;
    if (
      typeof o === "object" && o !== null && typeof o.prompt === "string" && typeof o.completion === "string"
    ) {
      out.push({ prompt: o.prompt, completion: o.completion });
    } else if (typeof o === "object" && o !== null && typeof o.text === "string") {
      out.push({ text: o.text });
    } else {
      throw new InvalidArgumentError(
        `Cannot read ${where}: expected {"text": string} or {"prompt": string, "completion": string}`,
      );
    }
  });
  if (out.length === 0) throw new InvalidArgumentError(`Cannot read ${source}: no examples`);
  return out;
}

/** Options of {@linkcode exampleSource}. */
export interface ExampleSourceOptions {
  /** Seed of the split and of the batch order (default 0). */
  seed?: number;
  /** Share of the examples held out for validation (default 0.1; at least one when there are two). */
  validationFraction?: number;
}

/**
 * Batches of examples for {@linkcode Trainer}: seeded random training batches, and the same validation
 * batches every call.
 *
 * @example
 * ```ts
 * import { ByteTokenizer, exampleSource } from "../../mod.ts";
 * import { assert, assertEquals } from "@std/assert";
 * const examples = Array.from({ length: 10 }, (_, i) => ({ prompt: `${i} + 1 = `, completion: `${i + 1}` }));
 * const source = exampleSource(examples, new ByteTokenizer());
 * const b = source.trainBatch(2, 12);
 * assertEquals(b.inputs.length, 24);
 * const resumed = exampleSource(examples, new ByteTokenizer());
 * resumed.setState!(source.getState!()); // a checkpoint's data position: the same next batch
 * assertEquals(resumed.trainBatch(2, 12).inputs, source.trainBatch(2, 12).inputs);
 * assert(b.targets.slice(0, 5).every((t) => t === -1)); // BOS and the prompt "i + 1 = " are not learnt
 * ```
 */
export function exampleSource(
  examples: readonly Example[],
  tokenizer: Tokenizer,
  options: ExampleSourceOptions = {},
): BatchSource {
  const seed = options.seed ?? 0;
  if (examples.every((e) => "text" in e)) {
    const texts = examples.map((e) => (e as { text: string }).text);
    const data = TextDataset.fromDocuments(texts, {
      tokenizer,
      seed,
      validationFraction: options.validationFraction,
    });
    return datasetSource(data, seed);
  }
  const pairs = examples.map((e) =>
    "text" in e ? encodePair(tokenizer, "", e.text) : encodePair(tokenizer, e.prompt, e.completion)
  );
  const f = options.validationFraction ?? 0.1;
  const n = pairs.length;
  const nVal = n >= 2 ? Math.min(n - 1, Math.max(1, Math.round(f * n))) : 0;
  const order = new Xorshift128(seed).shuffle([...Array(n).keys()]);
  const validation = order.slice(0, nVal), train = order.slice(nVal);
  const pad = tokenizer.pad ?? tokenizer.eos ?? 0;
  const fill = (rows: number[], seq: number): TokenBatch => {
    const inputs = new Int32Array(rows.length * seq).fill(pad);
    const targets = new Int32Array(rows.length * seq).fill(-1);
    rows.forEach((r, b) => {
      const { ids, labels } = pairs[r];
      const len = Math.min(ids.length - 1, seq); // positions with a next token
      inputs.set(ids.subarray(0, len), b * seq);
      targets.set(labels.subarray(1, len + 1), b * seq);
    });
    return { inputs, targets };
  };
  const rng = new Xorshift128(seed + 1);
  let drawn = 0, print: string | undefined;
  return {
    trainBatch(batch, seq) {
      drawn++;
      return fill(Array.from({ length: batch }, () => train[rng.nextInt(train.length)]), seq);
    },
    getState(): SamplerState {
      return { drawn, rng: rng.getState() };
    },
    setState(state) {
      const s = state as SamplerState;
      if (!Number.isSafeInteger(s?.drawn) || s.drawn < 0) {
        throw new InvalidArgumentError(`Cannot restore the data position: drawn ${s?.drawn}`);
      }
      rng.setState(s.rng);
      drawn = s.drawn;
    },
    describe() {
      print ??= fingerprint(...pairs.flatMap((p) => [p.ids, p.labels]));
      return { kind: "examples", seed, examples: n, validation: nVal, fingerprint: print };
    },
    validationBatches(batch, seq, max) {
      // Whole batches in order; fewer validation examples than a batch are repeated to fill one.
      const count = validation.length === 0 ? 0 : Math.max(1, Math.floor(validation.length / batch));
      const out: TokenBatch[] = [];
      for (let i = 0; i < Math.min(count, max); i++) {
        out.push(
          fill(Array.from({ length: batch }, (_, j) => validation[(i * batch + j) % validation.length]), seq),
        );
      }
      return out;
    },
  };
}
