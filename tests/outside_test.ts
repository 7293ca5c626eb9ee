/**
 * mod.ts from outside the repository: a script in a folder of its own, with no deno.json (so no import map,
 * no lockfile), imports the library by relative path and by `file://` URL, quantizes a tensor, builds a tiny
 * QLoRA model and trains one step, as a user's script would.
 */
import { assert, assertEquals, assertStringIncludes } from "@std/assert";

const MOD = new URL("../mod.ts", import.meta.url);

/** A user's script: quantize, build a tiny QLoRA model, train one step, print what it saw. */
function script(specifier: string): string {
  return `import * as Q from ${JSON.stringify(specifier)};
const w = Q.Tensor.randn([64, 64], { std: 0.02, seed: 1 });
const q = Q.quantize(w, { quantType: "nf4" });
const back = q.dequantize();
const err = Math.max(...w.toFloat32().map((v, i) => Math.abs(v - back.toFloat32()[i])));
const config = { vocabSize: 64, dim: 32, layers: 1, heads: 2, kvHeads: 2, hiddenDim: 64, maxSeq: 16,
  normEps: 1e-5, ropeTheta: 10000 };
const model = new Q.LlamaModel(config, { mode: "qlora", rank: 4, dtype: "bf16" });
const opt = new Q.PagedAdamW(model.trainables(), { lr: 1e-3 });
const ids = new Int32Array(16).map((_, i) => (i * 5 + 1) % 64);
const x = Q.Tensor.from(ids, { shape: [2, 8] });
const y = Q.Tensor.from(ids.map((t) => (t + 1) % 64), { shape: [2, 8] });
const loss = model.forward(x, y);
model.backward();
opt.step();
const chart = Q.barChart(["a"], { n: [1] });
console.log(JSON.stringify({ err, loss, quantized: Q.getDevice().memory().current.quantized_weights, chart: chart.data.length }));
`;
}

async function runOutside(specifier: (dir: string) => string): Promise<Record<string, number>> {
  const dir = await Deno.makeTempDir({ prefix: "qlora-outside-" });
  try {
    assert(!dir.startsWith(new URL("..", import.meta.url).pathname), "the folder is outside the repository");
    await Deno.writeTextFile(`${dir}/user.ts`, script(specifier(dir)));
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "user.ts"],
      cwd: dir,
      env: { QLORA_BACKEND: "cpu" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = new TextDecoder().decode(out.stdout), stderr = new TextDecoder().decode(out.stderr);
    assertEquals(out.code, 0, `exit ${out.code}\n${stderr}`);
    return JSON.parse(stdout.trim().split("\n").at(-1)!);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** The path of mod.ts relative to a folder. */
function relative(from: string, to: string): string {
  const a = from.split("/").filter(Boolean), b = to.split("/").filter(Boolean);
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return [...a.slice(i).map(() => ".."), ...b.slice(i)].join("/");
}

for (
  const [how, specifier] of [
    ["a relative path", (dir: string) => relative(dir, MOD.pathname)],
    ["a file:// URL", () => MOD.href],
  ] as const
) {
  Deno.test(`outside the repository, by ${how}: quantize, build a tiny QLoRA model, train a step`, async () => {
    const r = await runOutside(specifier);
    assert(r.err > 0 && r.err < 0.01, `NF4 round trip error ${r.err}`);
    assert(Number.isFinite(r.loss) && r.loss > 0, `loss ${r.loss}`);
    assert(r.quantized > 0, "the base is in 4 bits");
    assertEquals(r.chart, 1);
  });
}

Deno.test("outside the repository: the relative specifier helper", () => {
  assertEquals(relative("/tmp/x", "/work/main/mod.ts"), "../../work/main/mod.ts");
  assertStringIncludes(script("./m.ts"), 'from "./m.ts"');
});
