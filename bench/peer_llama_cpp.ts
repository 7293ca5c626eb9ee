/**
 * `./deno task bench:peer`: a real peer in the same run (issue 23, item 6). llama.cpp's CPU backend
 * (node-llama-cpp's prebuilt binary under Node.js, bench/_llama_cpp_peer.mjs) and this library, on the
 * same model: 4 blocks of LLaMA-2-7B's width (hidden 4096, intermediate 11008, 32 heads, vocabulary
 * 32,000; synthetic weights from a seed), written by this library's GGUF writer as BF16, Q4_0 and IQ4_NL
 * (llama.cpp's non-linear 16-value grid, NF4's nearest kin; embeddings and LM head BF16 in every file)
 * and run by us as bf16 (LoRA merged) and QLoRA (NF4 + double quantization, adapters unmerged).
 *
 * Measured, for each: a prompt of 512 tokens in one batch (tokens per second) and then decode steps, one
 * token at a time after it (tokens per second); llama.cpp by its own counters (llama_perf_context_print:
 * "prompt eval" and "eval" time), ours by `model.generate`'s stats (`prefillTokensPerSecond`,
 * `decodeTokensPerSecond`), the same thread count on both (our library's OpenMP threads). The engines
 * alternate round by round (llama.cpp's three files, then our two models), so that other load on the
 * machine hits both; the table gives the medians over the rounds and the ratios (to the engine's own
 * 16-bit row, and to llama.cpp's IQ4_NL: the bar).
 *
 * Options: `--quick` (a tiny model, 1 round: for the test), `--reps N` (rounds, default 5), `--prompt N`
 * (512), `--decode N` (decode steps, 32), `--seed N` (1), `--cache DIR` (the GGUF files, default
 * build/peer-bench/; kept for the next run), `--json FILE` (the result as JSON).
 *
 * @module
 */

import { getDevice, type LlamaModel } from "../mod.ts";
import { helpText, intFlags, parseArgs, runMain, UsageError } from "../scripts/_cli.ts";
import { ensureNodeLlamaCpp, NODE_LLAMA_CPP_MODULES, runCommand } from "../scripts/_node_llama_cpp.ts";
import { mergeAll, PEER_GGUF_TYPES, PEER_SHAPES, peerGGUFFiles, peerModel } from "./_peer_models.ts";
import { peerBar, peerRows, type PeerSamples, peerTableMarkdown } from "./_peer_table.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const USAGE = helpText("./deno task bench:peer [--quick] [--reps N] [--prompt N] [--decode N] [options]", [
  ["--quick", "a tiny model and 1 round (for the test); default off (4 blocks of LLaMA-2-7B's width)"],
  ["--reps N", "rounds, the engines in turn; default 5 (1 with --quick)"],
  ["--prompt N", "prompt tokens, processed in one batch; default 512 (32 with --quick)"],
  ["--decode N", "decode steps after the prompt, a token at a time; default 32 (8 with --quick)"],
  ["--seed N", "seed of the synthetic weights; default 1"],
  ["--cache DIR", "the GGUF files, kept for the next run; default build/peer-bench/"],
  ["--json FILE", "also write the result as JSON to FILE; default none"],
], [
  "llama.cpp's CPU backend (node-llama-cpp) on BF16, Q4_0 and IQ4_NL GGUF files and ours as bf16 and NF4",
  "on the same model: prompt and decode tokens/s, the medians over the rounds, and the ratios.",
]);
const GGUF_LABEL: Record<string, string> = { bf16: "BF16", q4_0: "Q4_0", iq4_nl: "IQ4_NL" };

/** What llama.cpp's runner answers (see bench/_llama_cpp_peer.mjs). */
interface RunnerAnswer {
  llamaCpp: { repo: string; release: string };
  node: string;
  cpuVariant: string | null;
  systemInfo: string;
  results: {
    name: string;
    fileType: string | null;
    repackMiB: number;
    threads: number;
    flashAttention: boolean | "auto";
    setupSeconds: number;
    samples: { promptMs: number; promptTokens: number; decodeMs: number; decodeRuns: number }[];
  }[];
}

/** A deterministic prompt of `n` ids among the normal tokens (the same for both engines). */
function prompt(n: number, vocab: number): number[] {
  return Array.from({ length: n }, (_, i) => 260 + (i * 7919 + 13) % (vocab - 260));
}

/** One round of llama.cpp: every file loaded, warmed up, timed once. */
async function llamaCppRound(
  files: Record<string, string>,
  o: { threads: number; prompt: number[]; decode: number; warmup: number[] },
  dir: string,
): Promise<RunnerAnswer> {
  const request = `${dir}/.peer-request.json`;
  await Deno.writeTextFile(
    request,
    JSON.stringify({
      threads: o.threads,
      prompt: o.prompt,
      decode: o.decode,
      warmup: { prompt: o.warmup, decode: 2 },
      reps: 1,
      files: PEER_GGUF_TYPES.map((t) => ({ name: t, path: files[t] })),
    }),
  );
  try {
    const r = await runCommand("node", [`${ROOT}bench/_llama_cpp_peer.mjs`, NODE_LLAMA_CPP_MODULES, request]);
    if (r.code !== 0) throw new Error(`the llama.cpp runner failed:\n${r.err}\n${r.out}`);
    const answer = JSON.parse(r.out.trim().split("\n").at(-1)!) as RunnerAnswer;
    for (const f of answer.results) {
      for (const s of f.samples) {
        if (s.promptTokens !== o.prompt.length || s.decodeRuns !== o.decode) {
          throw new Error(
            `llama.cpp timed ${s.promptTokens} prompt tokens and ${s.decodeRuns} decode calls on ${f.name}, ` +
              `not ${o.prompt.length} and ${o.decode}`,
          );
        }
      }
    }
    return answer;
  } finally {
    await Deno.remove(request).catch(() => {});
  }
}

/** One round of ours: the prompt and the decode steps through `model.generate`, its stats. */
async function oursRound(model: LlamaModel, ids: number[], decode: number): Promise<[number, number]> {
  const g = model.generate(ids, { maxNewTokens: 1 + decode });
  await g.collect();
  const s = g.stats!;
  if (s.decodeSteps !== decode) throw new Error(`ours ran ${s.decodeSteps} decode steps, not ${decode}`);
  return [s.prefillTokensPerSecond, s.decodeTokensPerSecond];
}

/** The CPU's name (Linux's /proc/cpuinfo), or the platform. */
function cpuName(): string {
  try {
    return /^model name\s*:\s*(.+)$/m.exec(Deno.readTextFileSync("/proc/cpuinfo"))?.[1] ?? Deno.build.target;
  } catch {
    return Deno.build.target;
  }
}

async function main(): Promise<void> {
  const { positional, flags } = parseArgs(Deno.args, {
    quick: "boolean",
    reps: "string",
    prompt: "string",
    decode: "string",
    seed: "string",
    cache: "string",
    json: "string",
  });
  if (positional.length) throw new UsageError(`unexpected argument ${positional[0]}`);
  const quick = Boolean(flags.quick), int = intFlags(flags);
  const config = PEER_SHAPES[quick ? "quick" : "full"];
  const reps = int("reps", quick ? 1 : 5), decode = int("decode", quick ? 8 : 32);
  const promptTokens = int("prompt", quick ? 32 : 512), seed = int("seed", 1);
  if (promptTokens + decode + 1 > config.maxSeq) {
    throw new UsageError(`--prompt + --decode must stay below the model's ${config.maxSeq} positions`);
  }
  const cache = (flags.cache as string | undefined) ?? `${ROOT}build/peer-bench`;
  const log = (line: string) => console.error(line);

  const device = getDevice("cpu");
  const threads = Number(/(\d+) OpenMP threads/.exec(device.name)?.[1] ?? navigator.hardwareConcurrency);
  const load = () => Deno.loadavg().map((x) => x.toFixed(1)).join(" ");
  console.log(
    `Peer benchmark on ${cpuName()}, ${navigator.hardwareConcurrency} logical cores; load average ${load()}\n` +
      `model: ${config.layers} blocks, hidden ${config.dim}, intermediate ${config.hiddenDim}, ${config.heads} ` +
      `heads, vocabulary ${config.vocabSize} (synthetic weights, seed ${seed}); prompt ${promptTokens} tokens, ` +
      `then ${decode} decode steps; medians of ${reps} round${reps > 1 ? "s" : ""}\n` +
      `ours: ${device} (${threads} threads)`,
  );

  const skip = await ensureNodeLlamaCpp();
  if (skip) console.log(`llama.cpp rows skipped: ${skip}`);
  using bf16 = peerModel(config, "lora", seed, device);
  const files = skip ? null : await peerGGUFFiles(bf16, seed, cache, log);
  mergeAll(bf16);
  using nf4 = peerModel(config, "qlora", seed, device);
  const ids = prompt(promptTokens, config.vocabSize);
  const warmup = prompt(8, config.vocabSize);
  // Ours warms up on the prompt itself (oneDNN builds its kernels per shape, once); llama.cpp, loaded
  // afresh each round, on a short one (that touches every weight's pages and the repacked copies).
  for (const m of [bf16, nf4]) await m.generate(ids, { maxNewTokens: 3 }).collect();

  const samples: PeerSamples[] = [
    ...PEER_GGUF_TYPES.map((t, i) => ({
      engine: "llama.cpp" as const,
      weights: GGUF_LABEL[t],
      sixteenBit: i === 0,
      prompt: [] as number[],
      decode: [] as number[],
    })),
    { engine: "qlora-lab", weights: "bf16", sixteenBit: true, prompt: [], decode: [] },
    { engine: "qlora-lab", weights: "NF4+DQ", sixteenBit: false, prompt: [], decode: [] },
  ];
  let peer: RunnerAnswer | null = null;
  const loads: number[] = []; // the 1-minute load average after each round: other work on the machine
  for (let r = 0; r < reps; r++) {
    if (files) {
      peer = await llamaCppRound(files, { threads, prompt: ids, decode, warmup }, cache);
      peer.results.forEach((f, i) => {
        const s = f.samples[0];
        samples[i].prompt.push((1000 * s.promptTokens) / s.promptMs);
        samples[i].decode.push((1000 * s.decodeRuns) / s.decodeMs);
      });
    }
    for (const [i, m] of [[3, bf16], [4, nf4]] as const) {
      const [p, d] = await oursRound(m, ids, decode);
      samples[i].prompt.push(p);
      samples[i].decode.push(d);
    }
    loads.push(Deno.loadavg()[0]);
    const f = (i: number) =>
      `${samples[i].prompt.at(-1)?.toFixed(0) ?? "-"}/${samples[i].decode.at(-1)?.toFixed(1) ?? "-"}`;
    log(
      `round ${r + 1}/${reps}: prompt/decode tok/s: llama.cpp BF16 ${f(0)}, Q4_0 ${f(1)}, IQ4_NL ${f(2)}; ` +
        `ours bf16 ${f(3)}, NF4 ${f(4)}`,
    );
  }

  const rows = peerRows(skip ? samples.slice(3) : samples);
  console.log("");
  if (peer) {
    const t = peer.results.map((f) => f.threads);
    console.log(
      `llama.cpp: node-llama-cpp ${peer.llamaCpp.repo} ${peer.llamaCpp.release}, CPU variant ${peer.cpuVariant}, ` +
        `${t[0]} threads${t.every((x) => x === t[0]) ? "" : ` (${t.join(", ")})`}, flash attention ` +
        `${peer.results[0].flashAttention}; repacked at load: ${
          peer.results.map((f) => `${f.name} ${f.repackMiB} MiB`).join(", ")
        }; Node ${peer.node}`,
    );
  }
  console.log(`qlora-lab: ${device}, ${threads} threads\n`);
  for (const line of peerTableMarkdown(rows, promptTokens)) console.log(line);
  console.log("");
  console.log(peerBar(rows, "NF4+DQ"));
  const lc = rows.find((r) => r.engine === "llama.cpp" && r.weights === "BF16");
  const ob = rows.find((r) => r.engine === "qlora-lab" && r.weights === "bf16");
  if (lc?.prompt && lc.decode && ob?.prompt && ob.decode) {
    console.log(
      `Ours bf16 / llama.cpp BF16: prompt ${(ob.prompt / lc.prompt).toFixed(2)}x, ` +
        `decode ${(ob.decode / lc.decode).toFixed(2)}x.`,
    );
  }
  if (reps > 1) {
    const list = (xs: number[]) => xs.map((x) => x >= 100 ? x.toFixed(0) : x.toFixed(1)).join(", ");
    console.log("Every round (prompt tok/s | decode tok/s), for the spread behind the medians:");
    for (const s of samples.filter((s) => s.prompt.length)) {
      console.log(`  ${s.engine} ${s.weights}: ${list(s.prompt)} | ${list(s.decode)}`);
    }
  }
  console.log(
    `Decode: ${decode} steps after the ${promptTokens}-token prompt. llama.cpp's figures are its own ` +
      "counters (the llama_decode calls); ours are model.generate's (the model and the greedy choice). " +
      `Load average at the end ${load()}.`,
  );
  const cores = navigator.hardwareConcurrency, busiest = Math.max(...loads);
  // Our run keeps `threads` cores busy; more than one core's worth beyond the machine's is other work.
  if (busiest > cores + 1) {
    console.log(
      `Note: the machine was busy (1-minute load average up to ${
        busiest.toFixed(1)
      } on ${cores} cores during ` +
        "the rounds): spin-waiting threads on oversubscribed cores slow both engines, unevenly; rerun when " +
        "it is quiet for figures to rely on.",
    );
  }
  if (flags.json) {
    await Deno.writeTextFile(
      flags.json as string,
      JSON.stringify(
        {
          machine: { cpu: cpuName(), cores: navigator.hardwareConcurrency },
          config,
          seed,
          promptTokens,
          decodeSteps: decode,
          reps,
          loadAverages: loads,
          threads: { ours: threads, llamaCpp: peer?.results.map((f) => f.threads) ?? null },
          llamaCpp: peer
            ? { ...peer.llamaCpp, cpuVariant: peer.cpuVariant, node: peer.node, systemInfo: peer.systemInfo }
            : null,
          skipped: skip,
          samples,
          rows,
        },
        null,
        2,
      ) + "\n",
    );
  }
}

if (import.meta.main) await runMain(main, USAGE);
