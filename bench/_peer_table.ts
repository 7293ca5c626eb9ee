/**
 * The table of `bench/peer_llama_cpp.ts`: per engine and weight type, the medians of prompt-processing
 * and decode tokens per second, each against the same engine's 16-bit row and against llama.cpp's IQ4_NL
 * (the bar of issue 23: "at least llama.cpp's IQ4_NL speed with NF4, prompt and decode"). Pure: samples
 * in, rows and Markdown out.
 *
 * @module
 */

/** The two engines. */
export type PeerEngine = "llama.cpp" | "qlora-lab";

/** The repetitions of one engine on one weight type (tokens per second; empty where it did not run). */
export interface PeerSamples {
  engine: PeerEngine;
  /** The weights as the engine names them (`BF16`, `Q4_0`, `IQ4_NL`; `bf16`, `NF4+DQ`). */
  weights: string;
  /** The engine's 16-bit row, the one its 4-bit rows are divided by. */
  sixteenBit: boolean;
  /** Prompt-processing tokens per second, one per repetition. */
  prompt: number[];
  /** Decode tokens per second, one per repetition. */
  decode: number[];
}

/** One row of the table: medians and ratios (null where a figure is missing). */
export interface PeerRow {
  engine: PeerEngine;
  weights: string;
  /** Repetitions behind the medians. */
  reps: number;
  /** Median prompt-processing tokens per second. */
  prompt: number | null;
  /** Median decode tokens per second. */
  decode: number | null;
  /** `prompt` over the same engine's 16-bit row's. */
  promptVs16: number | null;
  /** `decode` over the same engine's 16-bit row's. */
  decodeVs16: number | null;
  /** `prompt` over llama.cpp IQ4_NL's. */
  promptVsIq4nl: number | null;
  /** `decode` over llama.cpp IQ4_NL's. */
  decodeVsIq4nl: number | null;
}

/**
 * The median of some numbers (the mean of the middle two for an even count); null for none.
 *
 * @example
 * ```ts
 * import { median } from "./_peer_table.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals([median([3, 1, 2]), median([4, 1, 3, 2]), median([])], [2, 2.5, null]);
 * ```
 */
export function median(xs: readonly number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b), h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

const ratio = (a: number | null, b: number | null) => a !== null && b !== null && b > 0 ? a / b : null;

/**
 * The rows: medians per engine and weight type, each against its engine's 16-bit row and llama.cpp's
 * IQ4_NL row (the `llama.cpp` row whose weights are `IQ4_NL`).
 *
 * @example
 * ```ts
 * import { peerRows } from "./_peer_table.ts";
 * import { assertEquals } from "@std/assert";
 * const rows = peerRows([
 *   { engine: "llama.cpp", weights: "BF16", sixteenBit: true, prompt: [100, 90, 110], decode: [10, 10, 10] },
 *   { engine: "llama.cpp", weights: "IQ4_NL", sixteenBit: false, prompt: [200], decode: [20] },
 *   { engine: "qlora-lab", weights: "bf16", sixteenBit: true, prompt: [50], decode: [5] },
 *   { engine: "qlora-lab", weights: "NF4+DQ", sixteenBit: false, prompt: [40], decode: [15] },
 * ]);
 * assertEquals(rows[1].promptVs16, 2);
 * assertEquals([rows[3].promptVs16, rows[3].decodeVs16], [0.8, 3]);
 * assertEquals([rows[3].promptVsIq4nl, rows[3].decodeVsIq4nl], [0.2, 0.75]);
 * ```
 */
export function peerRows(samples: readonly PeerSamples[]): PeerRow[] {
  const medians = samples.map((s) => ({ s, prompt: median(s.prompt), decode: median(s.decode) }));
  const iq4nl = medians.find((m) => m.s.engine === "llama.cpp" && m.s.weights === "IQ4_NL");
  return medians.map(({ s, prompt, decode }) => {
    const base = medians.find((m) => m.s.engine === s.engine && m.s.sixteenBit);
    return {
      engine: s.engine,
      weights: s.weights,
      reps: Math.min(s.prompt.length, s.decode.length),
      prompt,
      decode,
      promptVs16: ratio(prompt, base?.prompt ?? null),
      decodeVs16: ratio(decode, base?.decode ?? null),
      promptVsIq4nl: ratio(prompt, iq4nl?.prompt ?? null),
      decodeVsIq4nl: ratio(decode, iq4nl?.decode ?? null),
    };
  });
}

const tps = (x: number | null) => x === null ? "-" : x >= 100 ? x.toFixed(0) : x.toFixed(1);
const times = (x: number | null) => x === null ? "-" : `${x.toFixed(2)}x`;

/**
 * The rows as a Markdown table: a header naming the prompt's length, one line per row.
 *
 * @example
 * ```ts
 * import { peerRows, peerTableMarkdown } from "./_peer_table.ts";
 * import { assertEquals } from "@std/assert";
 * const rows = peerRows([{ engine: "llama.cpp", weights: "IQ4_NL", sixteenBit: false, prompt: [250], decode: [40] }]);
 * const lines = peerTableMarkdown(rows, 512);
 * assertEquals(lines[0].split("|")[3].trim(), "prompt 512 tok/s");
 * assertEquals(lines[2], "| llama.cpp | IQ4_NL | 250 | 40.0 | - | - | 1.00x | 1.00x |");
 * ```
 */
export function peerTableMarkdown(rows: readonly PeerRow[], promptTokens: number): string[] {
  return [
    `| engine | weights | prompt ${promptTokens} tok/s | decode tok/s | prompt / engine's 16-bit | ` +
    "decode / engine's 16-bit | prompt / llama.cpp IQ4_NL | decode / llama.cpp IQ4_NL |",
    "|---|---|---|---|---|---|---|---|",
    ...rows.map((r) =>
      `| ${r.engine} | ${r.weights} | ${tps(r.prompt)} | ${tps(r.decode)} | ${times(r.promptVs16)} | ` +
      `${times(r.decodeVs16)} | ${times(r.promptVsIq4nl)} | ${times(r.decodeVsIq4nl)} |`
    ),
  ];
}

/**
 * The verdict on the bar: our 4-bit row (`weights`) against llama.cpp's IQ4_NL, prompt and decode; "not
 * measured" where either is missing.
 *
 * @example
 * ```ts
 * import { peerBar, peerRows } from "./_peer_table.ts";
 * import { assertStringIncludes } from "@std/assert";
 * const rows = peerRows([
 *   { engine: "llama.cpp", weights: "IQ4_NL", sixteenBit: false, prompt: [200], decode: [20] },
 *   { engine: "qlora-lab", weights: "NF4+DQ", sixteenBit: false, prompt: [100], decode: [30] },
 * ]);
 * assertStringIncludes(peerBar(rows, "NF4+DQ"), "prompt 0.50x (below the bar), decode 1.50x (meets it)");
 * ```
 */
export function peerBar(rows: readonly PeerRow[], weights: string): string {
  const ours = rows.find((r) => r.engine === "qlora-lab" && r.weights === weights);
  const head = `The bar (issue 23: at least llama.cpp's IQ4_NL speed with NF4, prompt and decode): `;
  if (!ours || ours.promptVsIq4nl === null || ours.decodeVsIq4nl === null) return head + "not measured";
  const judge = (x: number) => `${x.toFixed(2)}x (${x >= 1 ? "meets it" : "below the bar"})`;
  return head + `${weights} prompt ${judge(ours.promptVsIq4nl)}, decode ${judge(ours.decodeVsIq4nl)}`;
}
