// Times llama.cpp (node-llama-cpp's prebuilt CPU binary) on GGUF files for bench/peer_llama_cpp.ts, under
// Node.js: `node _llama_cpp_peer.mjs NODE_MODULES REQUEST.json`. The request:
//   { threads, prompt: [ids], decode: N, warmup: { prompt: [ids], decode: N }, reps: R,
//     files: [{ name, path }] }
// For each file: load it (mmap; Q4_0 and IQ4_NL repacked at load by llama.cpp's CPU backend), a context
// of `threads` threads with one batch as large as the prompt (so the prompt is one llama_decode call), a
// warm-up (the pages of every weight touched), then R times: the prompt, then `decode` greedy tokens one
// at a time, timed by llama.cpp's own counters (llama_perf_context_print, through context.printTimings()
// and the logger, which resets them): "prompt eval time" covers the batch of the prompt, "eval time" the
// single-token decode calls (sampling and node-llama-cpp's own work between them not counted).
// The answer is one JSON line on stdout.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [modules, requestPath] = process.argv.slice(2);
const { getLlama, LlamaLogLevel } = await import(
  pathToFileURL(`${modules}/node-llama-cpp/dist/index.js`).href
);
const request = JSON.parse(readFileSync(requestPath, "utf8"));

let logs = [];
const llama = await getLlama({
  gpu: false,
  build: "never",
  progressLogs: false,
  // 0: a context's `threads` is the exact number of threads llama.cpp computes with.
  maxThreads: 0,
  logLevel: LlamaLogLevel.info,
  logger: (level, message) => {
    logs.push(message);
    if (level === "error" || level === "fatal") process.stderr.write(`[llama.cpp ${level}] ${message}`);
  },
});

/** llama.cpp's perf counters since the last print: the prompt batch's and the decode calls'. */
async function timings(context) {
  logs = [];
  await context.printTimings();
  const text = logs.join("");
  const prompt = /prompt eval time =\s*([\d.]+) ms \/\s*(\d+) tokens/.exec(text);
  const decode = /(?<!prompt )eval time =\s*([\d.]+) ms \/\s*(\d+) runs/.exec(text);
  if (!prompt || !decode) throw new Error(`no timings in llama.cpp's output: ${text}`);
  return {
    promptMs: Number(prompt[1]),
    promptTokens: Number(prompt[2]),
    decodeMs: Number(decode[1]),
    decodeRuns: Number(decode[2]),
  };
}

/** The prompt, then `decode` greedy tokens after the one the prompt gives. */
async function run(sequence, prompt, decode) {
  let n = 0;
  for await (const _ of sequence.evaluate(prompt, { temperature: 0 })) if (++n > decode) break;
  await sequence.clearHistory();
}

/** The shared libraries of this process whose file name matches `re` (the CPU variant llama.cpp loaded). */
function mapped(re) {
  try {
    const paths = readFileSync("/proc/self/maps", "utf8").split("\n").map((l) => l.split(/\s+/).at(-1));
    return [...new Set(paths.filter((p) => re.test(p)).map((p) => p.split("/").at(-1)))];
  } catch {
    return [];
  }
}

const results = [];
for (const file of request.files) {
  logs = [];
  const t0 = performance.now();
  const model = await llama.loadModel({ modelPath: file.path, gpuLayers: 0 });
  const loadLog = logs.join("");
  const repack = /CPU_REPACK model buffer size =\s*([\d.]+) MiB/.exec(loadLog);
  const context = await model.createContext({
    contextSize: request.prompt.length + request.decode + 16,
    batchSize: request.prompt.length,
    threads: request.threads,
    performanceTracking: true,
  });
  const sequence = context.getSequence();
  await run(sequence, request.warmup.prompt, request.warmup.decode);
  await timings(context);
  const setupSeconds = (performance.now() - t0) / 1000; // load, repack, warm-up
  const samples = [];
  for (let r = 0; r < request.reps; r++) {
    await run(sequence, request.prompt, request.decode);
    samples.push(await timings(context));
  }
  results.push({
    name: file.name,
    path: file.path,
    fileType: /file type\s*=\s*(\S+)/.exec(loadLog)?.[1] ?? null,
    repackMiB: repack ? Number(repack[1]) : 0,
    threads: context.currentThreads,
    flashAttention: context.flashAttention,
    setupSeconds,
    samples,
  });
  await context.dispose();
  await model.dispose();
}
const answer = {
  llamaCpp: llama.llamaCppRelease,
  node: process.version,
  cpuVariant: mapped(/libggml-cpu/).map((f) => f.replace(/^libggml-cpu-?|\.so.*$/g, "")).join(",") || null,
  systemInfo: llama.systemInfo.trim(),
  results,
};
await llama.dispose();
process.stdout.write(JSON.stringify(answer) + "\n");
