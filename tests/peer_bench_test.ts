// bench/peer_llama_cpp.ts (`./deno task bench:peer`): the table's arithmetic (medians, the ratios to each
// engine's 16-bit row and to llama.cpp's IQ4_NL, the bar's verdict), then the command itself at its
// --quick size against llama.cpp (node-llama-cpp under Node.js, installed by scripts/_node_llama_cpp.ts as
// tests/gguf_llama_cpp_test.ts does; skipped, with the reason, only where the npm registry cannot be
// reached): the table's rows and columns, its JSON, thread counts that agree, and the GGUF files cached.
import { assert, assertAlmostEquals, assertEquals, assertStringIncludes } from "@std/assert";
import { median, peerBar, peerRows, type PeerSamples, peerTableMarkdown } from "../bench/_peer_table.ts";
import { ensureNodeLlamaCpp } from "../scripts/_node_llama_cpp.ts";

const ROOT = new URL("..", import.meta.url).pathname;

const SAMPLES: PeerSamples[] = [
  {
    engine: "llama.cpp",
    weights: "BF16",
    sixteenBit: true,
    prompt: [170, 160, 180, 1],
    decode: [23, 22, 24, 23],
  },
  { engine: "llama.cpp", weights: "Q4_0", sixteenBit: false, prompt: [300], decode: [35] },
  {
    engine: "llama.cpp",
    weights: "IQ4_NL",
    sixteenBit: false,
    prompt: [290, 300, 310],
    decode: [36, 37, 38],
  },
  { engine: "qlora-lab", weights: "bf16", sixteenBit: true, prompt: [100, 120], decode: [12, 12] },
  { engine: "qlora-lab", weights: "NF4+DQ", sixteenBit: false, prompt: [90, 80, 70], decode: [40, 45, 41] },
];

Deno.test("peer table: medians, ratios to the engine's 16-bit row and to llama.cpp IQ4_NL", () => {
  assertEquals(median([5, 1, 1000, 2, 3]), 3);
  const rows = peerRows(SAMPLES);
  assertEquals(
    rows.map((r) => [r.engine, r.weights, r.reps]),
    SAMPLES.map((s) => [s.engine, s.weights, Math.min(s.prompt.length, s.decode.length)]),
  );
  const [bf16, , iq4nl, ours16, nf4] = rows;
  assertEquals([bf16.prompt, bf16.decode], [165, 23]); // an outlier (1 tok/s) does not move a median much
  assertEquals([bf16.promptVs16, bf16.decodeVs16], [1, 1]);
  assertAlmostEquals(iq4nl.promptVs16!, 300 / 165);
  assertEquals([iq4nl.promptVsIq4nl, iq4nl.decodeVsIq4nl], [1, 1]);
  // Ours are divided by our own bf16 row, never llama.cpp's.
  assertAlmostEquals(nf4.promptVs16!, 80 / 110);
  assertAlmostEquals(nf4.decodeVs16!, 41 / 12);
  assertAlmostEquals(nf4.promptVsIq4nl!, 80 / 300);
  assertAlmostEquals(nf4.decodeVsIq4nl!, 41 / 37);
  assertAlmostEquals(ours16.decodeVsIq4nl!, 12 / 37);
  assertEquals(
    peerBar(rows, "NF4+DQ"),
    "The bar (issue 23: at least llama.cpp's IQ4_NL speed with NF4, prompt and decode): NF4+DQ prompt 0.27x " +
      "(below the bar), decode 1.11x (meets it)",
  );
  const lines = peerTableMarkdown(rows, 512);
  assertEquals(lines.length, 2 + rows.length);
  assertEquals(lines[6], "| qlora-lab | NF4+DQ | 80.0 | 41.0 | 0.73x | 3.42x | 0.27x | 1.11x |");
});

Deno.test("peer table: without llama.cpp's rows, no ratio to it and no verdict", () => {
  const rows = peerRows(SAMPLES.slice(3));
  assertEquals(rows.map((r) => [r.promptVsIq4nl, r.decodeVsIq4nl]), [[null, null], [null, null]]);
  assertAlmostEquals(rows[1].decodeVs16!, 41 / 12);
  assertStringIncludes(peerBar(rows, "NF4+DQ"), "not measured");
  assertStringIncludes(peerTableMarkdown(rows, 512)[3], "| - | - |");
});

/** `deno run -A bench/peer_llama_cpp.ts ARGS`: its exit code and output. */
async function bench(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}bench/peer_llama_cpp.ts`, ...args],
    env: { QLORA_BACKEND: "cpu" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("bench:peer --quick: llama.cpp and ours in one table, the GGUF files cached", async () => {
  const skip = await ensureNodeLlamaCpp();
  if (skip) {
    console.log(`SKIPPED (peer benchmark not run): ${skip}`);
    return;
  }
  const tmp = await Deno.makeTempDir();
  try {
    const json = `${tmp}/peer.json`;
    const first = await bench(["--quick", "--cache", tmp, "--json", json]);
    assertEquals(first.code, 0, first.stderr);
    const header = "| engine | weights | prompt 32 tok/s | decode tok/s | prompt / engine's 16-bit | " +
      "decode / engine's 16-bit | prompt / llama.cpp IQ4_NL | decode / llama.cpp IQ4_NL |";
    const table = first.stdout.split("\n").filter((l) => l.startsWith("|"));
    assertEquals(table[0], header);
    const cells = table.slice(2).map((l) => l.split("|").slice(1, -1).map((c) => c.trim()));
    assertEquals(cells.map((c) => c.slice(0, 2)), [
      ["llama.cpp", "BF16"],
      ["llama.cpp", "Q4_0"],
      ["llama.cpp", "IQ4_NL"],
      ["qlora-lab", "bf16"],
      ["qlora-lab", "NF4+DQ"],
    ]);
    for (const c of cells) {
      for (const v of c.slice(2, 4)) assert(Number(v) > 0, `a speed: ${c}`);
      for (const v of c.slice(4)) assert(/^\d+\.\d\dx$/.test(v), `a ratio: ${c}`);
    }
    assertEquals([cells[0][4], cells[0][5], cells[2][6], cells[2][7], cells[3][4]], Array(5).fill("1.00x"));
    assertStringIncludes(first.stdout, "The bar (issue 23: at least llama.cpp's IQ4_NL speed with NF4");
    assertEquals(first.stderr.match(/^wrote .*\.gguf/gm)?.length, 3, first.stderr);

    const result = JSON.parse(await Deno.readTextFile(json));
    assertEquals([result.promptTokens, result.decodeSteps, result.reps], [32, 8, 1]);
    assertEquals(result.skipped, null);
    assertEquals(result.threads.llamaCpp, [result.threads.ours, result.threads.ours, result.threads.ours]);
    assertEquals(result.rows.length, 5);
    const nf4 = result.rows[4], iq4nl = result.rows[2];
    assertAlmostEquals(nf4.promptVsIq4nl, nf4.prompt / iq4nl.prompt);
    assertAlmostEquals(nf4.decodeVsIq4nl, nf4.decode / iq4nl.decode);
    assertEquals(result.samples.map((s: PeerSamples) => s.prompt.length), [1, 1, 1, 1, 1]);

    // A second run finds the three files and writes none; two rounds give two samples a row.
    const second = await bench(["--quick", "--cache", tmp, "--json", json, "--reps", "2"]);
    assertEquals(second.code, 0, second.stderr);
    assertEquals(second.stderr.match(/^wrote /gm), null, second.stderr);
    const again = JSON.parse(await Deno.readTextFile(json));
    assertEquals(again.samples.map((s: PeerSamples) => s.decode.length), [2, 2, 2, 2, 2]);
    const left = [...Deno.readDirSync(tmp)].map((e) => e.name).sort();
    assertEquals(left.filter((n) => n.endsWith(".gguf")).length, 3);
    assertEquals(
      left.filter((n) => !n.endsWith(".gguf")),
      ["peer.json"],
      "no request or temporary file left",
    );
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
