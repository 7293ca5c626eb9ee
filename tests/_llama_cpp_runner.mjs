// Runs llama.cpp (through node-llama-cpp's prebuilt CPU binary) on GGUF files for
// tests/gguf_llama_cpp_test.ts, under Node.js: `node _llama_cpp_runner.mjs NODE_MODULES REQUEST.json`.
// Deno cannot import the package from a folder of its own node_modules under this repository's config,
// so the test installs it with npm under build/ and drives it from here. The request lists GGUF files
// and what to do with each; the answer is one JSON line on stdout:
// - header: node-llama-cpp's own GGUF parser's reading of the file (metadata, tensor infos);
// - tokenize / detokenize: llama.cpp's tokenizer on texts and ids (no BOS, no special-token parsing);
// - greedy: `generate` tokens after `prompt` by llama.cpp's greedy sampler, with the log-probabilities
//   of the whole vocabulary at each step;
// - forced: the log-probabilities at every position of `forced` (teacher forcing).
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [modules, requestPath] = process.argv.slice(2);
const { getLlama, LlamaLogLevel, readGgufFileInfo } = await import(
  pathToFileURL(`${modules}/node-llama-cpp/dist/index.js`).href
);
const request = JSON.parse(readFileSync(requestPath, "utf8"));

const llama = await getLlama({
  gpu: false,
  build: "never",
  progressLogs: false,
  logLevel: LlamaLogLevel.error,
  logger: (level, message) => process.stderr.write(`[llama.cpp ${level}] ${message}`),
});

/** Log-probabilities by token id from node-llama-cpp's probability map (softmax of the raw logits). */
function logProbs(probabilities, vocab) {
  const out = new Array(vocab).fill(null);
  for (const [id, p] of probabilities) out[id] = p > 0 ? Math.log(p) : null;
  return out;
}

/** Evaluates `tokens` after what the sequence holds; the log-probabilities after each of `at`. */
async function evaluate(sequence, tokens, at, vocab) {
  const input = tokens.map((t, i) =>
    at.includes(i)
      ? [t, { generateNext: { token: true, probabilities: true, options: { temperature: 0 } } }]
      : t
  );
  const out = await sequence.controlledEvaluate(input);
  return at.map((i) => ({ token: out[i].next.token, logProbs: logProbs(out[i].next.probabilities, vocab) }));
}

const results = [];
for (const job of request.models) {
  const t0 = performance.now();
  const info = await readGgufFileInfo(job.path, { logWarnings: false });
  const model = await llama.loadModel({ modelPath: job.path, gpuLayers: 0 });
  const vocab = info.metadata.tokenizer.ggml.tokens.length;
  // One thread: these models take microseconds a token, and two threads that spin-wait for each other on a
  // busy 2-core machine took seconds a model.
  const context = await model.createContext({ contextSize: 128, batchSize: 128, threads: 1 });
  const sequence = context.getSequence();
  const t1 = performance.now();
  const result = {
    path: job.path,
    header: {
      version: info.version,
      metadata: info.metadata,
      tensors: info.fullTensorInfo.map((t) => ({
        name: t.name,
        dimensions: t.dimensions.map(Number),
        ggmlType: t.ggmlType,
        offset: Number(t.offset),
      })),
    },
    special: { bos: model.tokens.bos, eos: model.tokens.eos },
    tokenize: (job.texts ?? []).map((text) => model.tokenize(text, false)),
    detokenize: (job.detokenize ?? []).map((ids) => model.detokenize(ids, false)),
  };
  if (job.prompt) {
    const steps = [];
    let next = await evaluate(sequence, job.prompt, [job.prompt.length - 1], vocab);
    for (let i = 0; i < job.generate; i++) {
      steps.push(next[0]);
      if (i + 1 < job.generate) next = await evaluate(sequence, [next[0].token], [0], vocab);
    }
    result.greedy = { tokens: steps.map((s) => s.token), logProbs: steps.map((s) => s.logProbs) };
    await sequence.clearHistory();
  }
  if (job.forced) {
    const at = job.forced.map((_, i) => i);
    result.forced = (await evaluate(sequence, job.forced, at, vocab)).map((s) => s.logProbs);
    await sequence.clearHistory();
  }
  result.ms = { load: Math.round(t1 - t0), run: Math.round(performance.now() - t1) };
  await context.dispose();
  await model.dispose();
  results.push(result);
}
await llama.dispose();
process.stdout.write(
  JSON.stringify(
    { llamaCpp: llama.llamaCppRelease, node: process.version, results },
    (_, v) => typeof v === "bigint" ? Number(v) : v,
  ) + "\n",
);
