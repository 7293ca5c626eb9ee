import { assert, assertEquals, assertStringIncludes, assertThrows } from "@std/assert";
import {
  dequantizeCheckpoint,
  dynamicMap,
  getDevice,
  InvalidArgumentError,
  parseBytes,
  quantizeCheckpoint,
  readSafetensors,
  SafetensorsReader,
  writeSafetensors,
} from "../mod.ts";
import { f32ToBf16 } from "../lib/core/dtype.ts";
import { assertBitEqual, normalValues, referenceDoubleQuantize, referenceQuantize } from "./_reference.ts";
import { runScript } from "./_run_script.ts";
import { budgetFlags, stepMemoryFlags, UsageError } from "../scripts/_cli.ts";

const run = (script: string, args: string[], cwd?: string) => runScript(script, args, { cwd });

const bytes = (a: Float32Array | Uint16Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

async function makeInput(dir: string): Promise<{ path: string; w: Float32Array; v: Float32Array }> {
  const w = normalValues(256 * 130, 1, 0.02); // 2-D f32: quantized
  const v = normalValues(64 * 33, 2, 0.5); // 2-D bf16: quantized (last block partial)
  const path = `${dir}/in.safetensors`;
  await writeSafetensors(path, [
    { name: "model.layers.0.mlp.up_proj.weight", dtype: "F32", shape: [256, 130], data: bytes(w) },
    {
      name: "model.layers.0.self_attn.q_proj.weight",
      dtype: "BF16",
      shape: [33, 64],
      data: bytes(f32ToBf16(v)),
    },
    { name: "model.norm.weight", dtype: "F32", shape: [130], data: bytes(new Float32Array(130).fill(1)) },
    { name: "lm_head.weight", dtype: "F32", shape: [10, 64], data: bytes(normalValues(640, 3)) },
    { name: "step", dtype: "I64", shape: [1], data: new Uint8Array(8).fill(7) },
  ], { format: "pt" });
  return { path, w, v };
}

Deno.test("quantize CLI: bitsandbytes layout, codes bit for bit, others copied", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const { path, w } = await makeInput(dir);
    const out = `${dir}/out.safetensors`;
    const r = await run("quantize.ts", [path, out, "--skip", "lm_head"]);
    assertEquals(r.code, 0, r.stderr);
    assertStringIncludes(r.stdout, "quantized   model.layers.0.mlp.up_proj.weight");
    assertStringIncludes(r.stdout, "copied      lm_head.weight");
    assertStringIncludes(r.stdout, "total: 5 tensors");
    const file = await readSafetensors(out);
    const name = "model.layers.0.mlp.up_proj.weight";
    const n = 256 * 130, blocks = Math.ceil(n / 64);
    const get = (k: string) => {
      const t = file.get(k);
      assert(t, `${k} is missing`);
      return t;
    };
    assertEquals(get(name).info.dtype, "U8");
    assertEquals(get(name).info.shape, [n / 2, 1]);
    const want = referenceQuantize(w, "nf4", 64);
    assertBitEqual(get(name).data, want.packed, "packed codes match the definition bit for bit");
    const dq = referenceDoubleQuantize(want.absmax, dynamicMap(getDevice("cpu")), 256);
    assertEquals(get(`${name}.absmax`).info.dtype, "U8");
    assertEquals(get(`${name}.absmax`).data, dq.codes);
    assertEquals(get(`${name}.nested_absmax`).info.shape, [Math.ceil(blocks / 256)]);
    assertEquals(new Float32Array(get(`${name}.nested_absmax`).data.slice().buffer), dq.nested);
    assertEquals(get(`${name}.quant_map`).info.shape, [16]);
    assertEquals(get(`${name}.nested_quant_map`).info.shape, [256]);
    const state = JSON.parse(new TextDecoder().decode(get(`${name}.quant_state.bitsandbytes__nf4`).data));
    assertEquals(state, {
      quant_type: "nf4",
      blocksize: 64,
      dtype: "float32",
      shape: [256, 130],
      nested_blocksize: 256,
      nested_dtype: "float32",
      nested_offset: dq.offset,
    });
    const q = JSON.parse(
      new TextDecoder().decode(
        get("model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4").data,
      ),
    );
    assertEquals(q.dtype, "bfloat16");
    assertEquals(get("lm_head.weight").info.dtype, "F32", "--skip copies unchanged");
    assertEquals(get("model.norm.weight").info.shape, [130], "1-D tensors are copied");
    assertEquals(get("step").data, new Uint8Array(8).fill(7));
    using reader = await SafetensorsReader.open(out);
    assertEquals(reader.metadata.format, "pt");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("dequantize CLI restores weights close to the originals, in the recorded dtype", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const { path, w } = await makeInput(dir);
    for (
      const [flags, key] of [[[], "nf4"], [
        ["--quant-type", "fp4", "--no-double-quant", "--blocksize", "128"],
        "fp4",
      ]]
    ) {
      const q = `${dir}/q.safetensors`, d = `${dir}/d.safetensors`;
      assertEquals((await run("quantize.ts", [path, q, ...(flags as string[])])).code, 0);
      const r = await run("dequantize.ts", [q, d]);
      assertEquals(r.code, 0, r.stderr);
      const file = await readSafetensors(d);
      assertEquals([...file.keys()].sort(), [
        "lm_head.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.norm.weight",
        "step",
      ]);
      const up = file.get("model.layers.0.mlp.up_proj.weight")!;
      assertEquals(up.info.dtype, "F32");
      const restored = new Float32Array(up.data.slice().buffer);
      let sq = 0, ref = 0;
      for (let i = 0; i < w.length; i++) {
        sq += (w[i] - restored[i]) ** 2;
        ref += w[i] ** 2;
      }
      assert(
        Math.sqrt(sq / ref) < (key === "nf4" ? 0.1 : 0.13),
        `${key}: relative RMS ${Math.sqrt(sq / ref)}`,
      );
      assertEquals(file.get("model.layers.0.self_attn.q_proj.weight")!.info.dtype, "BF16");
      const r16 = await run("dequantize.ts", [q, `${dir}/h.safetensors`, "--dtype", "f16"]);
      assertEquals(r16.code, 0, r16.stderr);
      assertEquals(
        (await readSafetensors(`${dir}/h.safetensors`)).get("model.norm.weight")!.info.dtype,
        "F32",
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("CLI: bad arguments and files give a clear error, a non-zero exit, and no output file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const { path } = await makeInput(dir);
    const out = `${dir}/out.safetensors`;
    const cases: [string, string[], string][] = [
      ["quantize.ts", [path], "expected IN and OUT"],
      ["quantize.ts", [path, out, "--quant-type", "int3"], "--quant-type"],
      ["quantize.ts", [path, out, "--blocksize", "100"], "--blocksize"],
      ["quantize.ts", [path, out, "--frobnicate"], "unknown flag"],
      ["quantize.ts", [path, out, "--skip", "("], "--skip"],
      ["quantize.ts", [`${dir}/missing.safetensors`, out], "error:"],
      ["dequantize.ts", [path, out, "--dtype", "f64"], "--dtype"],
    ];
    const garbage = `${dir}/garbage.safetensors`;
    await Deno.writeFile(garbage, new Uint8Array([255, 255, 255, 255, 0, 0, 0, 0, 1, 2, 3]));
    cases.push(["quantize.ts", [garbage, out], "error: Cannot read"]);
    for (const [script, args, message] of cases) {
      const r = await run(script, args);
      assertEquals(r.code, 1, `${script} ${args.join(" ")}`);
      assertStringIncludes(r.stderr, message);
    }
    const left = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assertEquals(left, ["garbage.safetensors", "in.safetensors"], "no output and no temporary file left");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("quantize and dequantize refuse an OUT that is IN: same path, ./ path, hard link, symbolic link", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const { path } = await makeInput(dir);
    const original = await Deno.readFile(path);
    await Deno.link(path, `${dir}/hard.safetensors`);
    await Deno.symlink(path, `${dir}/soft.safetensors`);
    await Deno.mkdir(`${dir}/sub`);
    const cases: [string, string, string | undefined][] = [
      [path, path, undefined],
      ["in.safetensors", "./in.safetensors", dir],
      ["in.safetensors", "sub/../in.safetensors", dir],
      [path, `${dir}/hard.safetensors`, undefined],
      [path, `${dir}/soft.safetensors`, undefined],
      [`${dir}/soft.safetensors`, path, undefined],
    ];
    for (const script of ["quantize.ts", "dequantize.ts"]) {
      for (const [input, output, cwd] of cases) {
        const r = await run(script, [input, output], cwd);
        const what = `${script} ${input} ${output}`;
        assertEquals(r.code, 1, `${what} was not refused: ${r.stdout}`);
        const verb = script === "quantize.ts" ? "quantize" : "dequantize";
        assertStringIncludes(
          r.stderr,
          `error: Cannot ${verb}: IN and OUT are the same file (${input} and ${output}`,
        );
        assertEquals(await Deno.readFile(path), original, `${what} changed IN`);
      }
    }
    const left = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assertEquals(
      left,
      ["hard.safetensors", "in.safetensors", "soft.safetensors", "sub"],
      "no temporary file left",
    );
    assert(Deno.lstatSync(`${dir}/soft.safetensors`).isSymlink, "the symbolic link was replaced");

    // A different file whose path looks alike, or a copy with the same bytes, is fine.
    await Deno.copyFile(path, `${dir}/copy.safetensors`);
    const r = await run("quantize.ts", [path, `${dir}/copy.safetensors`]);
    assertEquals(r.code, 0, r.stderr);
    assertEquals(await Deno.readFile(path), original);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("quantizeCheckpoint and dequantizeCheckpoint refuse OUT = IN itself with an InvalidArgumentError", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const { path } = await makeInput(dir);
    await Deno.link(path, `${dir}/same.safetensors`);
    const cpu = getDevice("cpu");
    const e1 = await quantizeCheckpoint(cpu, path, `${dir}/same.safetensors`).catch((e) => e);
    assert(e1 instanceof InvalidArgumentError, String(e1));
    assertStringIncludes(e1.message, "Cannot quantize: IN and OUT are the same file");
    const e2 = await dequantizeCheckpoint(cpu, `${dir}/same.safetensors`, path).catch((e) => e);
    assert(e2 instanceof InvalidArgumentError, String(e2));
    assertStringIncludes(e2.message, "Cannot dequantize: IN and OUT are the same file");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--budget and --reserve: the ledger's budget is the budget less the reserve; bad pairs are usage errors", () => {
  const GiB = 2 ** 30;
  const b = budgetFlags({ budget: "6GiB", reserve: "0.31GiB" })!;
  assertEquals([b.budget, b.reserve], [6 * GiB, parseBytes("0.31GiB")]);
  assertEquals(b.ledger, b.budget - b.reserve);
  assert(b.ledger > 5.68 * GiB && b.ledger < 5.7 * GiB, `${b.ledger}`);
  assertEquals(budgetFlags({ budget: "1000", reserve: "1" })?.ledger, 999);
  assertEquals(budgetFlags({ budget: "6GiB" }), { budget: 6 * GiB, reserve: 0, ledger: 6 * GiB });
  assertEquals(budgetFlags({ budget: "6GiB", reserve: "0" })?.ledger, 6 * GiB);
  assertEquals(budgetFlags({}), null);
  for (
    const [flags, message] of [
      [{ reserve: "1GiB" }, "--reserve needs --budget"],
      [{ budget: "1GiB", reserve: "1GiB" }, "must be smaller than --budget"],
      [{ budget: "1GiB", reserve: "2GiB" }, "must be smaller than --budget"],
      [{ budget: "0" }, "--budget must be a size > 0"],
      [{ budget: "six" }, "--budget: Cannot parse a byte size"],
      [{ budget: "6GiB", reserve: "-1" }, "--reserve: Cannot parse a byte size"],
    ] as const
  ) {
    assertThrows(() => budgetFlags(flags), UsageError, message, JSON.stringify(flags));
  }
});

Deno.test("--offload-checkpoints needs --checkpointing; --loss-chunk is an integer >= 0", () => {
  assertEquals(stepMemoryFlags({ checkpointing: true, "offload-checkpoints": true }), {
    checkpointing: true,
    offloadCheckpoints: true,
  });
  assertEquals(stepMemoryFlags({ "loss-chunk": "0" }), {
    checkpointing: false,
    offloadCheckpoints: false,
    lossChunk: 0,
  });
  assertEquals(stepMemoryFlags({ "loss-chunk": "256" }).lossChunk, 256);
  assertThrows(() => stepMemoryFlags({ "offload-checkpoints": true }), UsageError, "needs --checkpointing");
  for (const bad of ["-1", "1.5", "x"]) {
    assertThrows(() => stepMemoryFlags({ "loss-chunk": bad }), UsageError, "--loss-chunk", bad);
  }
});

Deno.test("train: --reserve without --budget, a reserve past the budget, and offload without checkpointing exit 1", async () => {
  for (
    const [args, message] of [
      [["--reserve", "1GiB"], "--reserve needs --budget"],
      [["--budget", "1GiB", "--reserve", "2GiB"], "must be smaller than --budget"],
      [["--offload-checkpoints"], "--offload-checkpoints needs --checkpointing"],
      [["--checkpointing", "--loss-chunk", "-4"], "--loss-chunk"],
    ] as const
  ) {
    const r = await run("train.ts", [...args]);
    assertEquals(r.code, 1, `${args.join(" ")}: ${r.stdout}`);
    assertStringIncludes(r.stderr, message);
    assertStringIncludes(r.stderr, "usage: ./deno task train");
  }
});

// --help and -h on every command a deno task runs (issue 24, item 6).

const ROOT = new URL("..", import.meta.url).pathname;

/**
 * The scripts that deno.json's tasks run with `deno run`, each with the arguments the task gives it
 * (`notebooks.ts install`, `run`, `serve`): what `./deno task NAME --help` runs.
 */
function taskCommands(): { path: string; args: string[] }[] {
  const tasks = JSON.parse(Deno.readTextFileSync(`${ROOT}deno.json`)).tasks as Record<
    string,
    { command: string }
  >;
  const seen = new Map<string, { path: string; args: string[] }>();
  for (const { command } of Object.values(tasks)) {
    for (const m of command.matchAll(/deno run (?:-\S+ )*(\S+\.ts)((?: [a-z]\w*)*)/g)) {
      const args = m[2].trim() ? m[2].trim().split(" ") : [];
      seen.set(`${m[1]} ${args.join(" ")}`, { path: m[1], args });
    }
  }
  return [...seen.values()];
}

/**
 * The flags a script's source accepts: the keys of every flag spec it passes to `parseArgs` or
 * `parseCommandLine`, and the names it gives `takeOptionalFlag`.
 */
function sourceFlags(source: string): string[] {
  const flags = new Set<string>();
  for (const spec of source.matchAll(/(?:parseArgs\([\w.]+,|parseCommandLine\()\s*\{([^}]*)\}/g)) {
    for (const key of spec[1].matchAll(/(?:"([\w-]+)"|(\w+))\s*:\s*"(?:string|boolean)"/g)) {
      flags.add(key[1] ?? key[2]);
    }
  }
  for (const m of source.matchAll(/takeOptionalFlag\([\w.]+,\s*"([\w-]+)"\)/g)) flags.add(m[1]);
  return [...flags];
}

/**
 * What is wrong with a command's help: a first line that is not "usage: ...", an option line without
 * "; default ..." or "; required", a missing `-h, --help` line, or a flag of `flags` without a line of
 * its own.
 */
function helpProblems(help: string, flags: string[]): string[] {
  const lines = help.split("\n");
  const problems: string[] = [];
  if (!lines[0].startsWith("usage: ")) problems.push(`the first line is not "usage: ...": ${lines[0]}`);
  const end = lines.indexOf("");
  const options = lines.slice(1, end < 0 ? undefined : end).filter((l) => !l.startsWith("       "));
  for (const line of options) {
    if (!/^ {2}\S/.test(line)) problems.push(`not an option line: ${line}`);
    else if (!line.startsWith("  -h, --help") && !/; (default|required)/.test(line)) {
      problems.push(`no "; default ..." or "; required": ${line}`);
    }
  }
  if (!options.some((l) => l.startsWith("  -h, --help "))) problems.push("no -h, --help line");
  for (const flag of flags) {
    if (!options.some((l) => new RegExp(`^ {2}--${flag}(?=[ ,]|$)`).test(l))) {
      problems.push(`no line for --${flag}`);
    }
  }
  return problems;
}

/**
 * `deno run -A PATH ARGS` on the CPU backend, as `runScript` runs scripts/ (for bench/ too), killed after
 * 60 s: a command that starts its work instead of printing the help fails.
 */
async function runPath(
  path: string,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}${path}`, ...args],
    env: { QLORA_BACKEND: "cpu" },
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(60_000),
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("helpProblems: a help without usage, a default, the help line or a flag's line is refused", () => {
  const good = [
    "usage: ./deno task x [--steps N]",
    "       ./deno task x --other",
    "  --steps N   steps; default 4",
    "  --other     the other question; default off",
    "  -h, --help  print this help and exit",
    "",
    "Notes.",
  ].join("\n");
  assertEquals(helpProblems(good, ["steps", "other"]), []);
  assertEquals(helpProblems(good.replace("usage: ", ""), ["steps"]).length, 1);
  assertEquals(helpProblems(good.replace("; default 4", ""), ["steps"]), [
    'no "; default ..." or "; required":   --steps N   steps',
  ]);
  assertEquals(helpProblems(good.replace(/ {2}-h, --help.*\n/, ""), []), ["no -h, --help line"]);
  assertEquals(helpProblems(good, ["step", "seed"]), ["no line for --step", "no line for --seed"]);
  assertEquals(
    sourceFlags(
      'parseArgs(rest, { seq: "string", "no-bos": "boolean" }); takeOptionalFlag(Deno.args, "resume");\n' +
        'parseCommandLine({ only: "string" }, USAGE);',
    ).sort(),
    ["no-bos", "only", "resume", "seq"],
  );
});

Deno.test("every deno task command: --help and -h print the usage, one line per flag with its default, exit 0", async () => {
  const commands = taskCommands();
  const paths = new Set(commands.map((c) => c.path));
  for (
    const path of [
      "scripts/train.ts",
      "scripts/finetune.ts",
      "scripts/fit.ts",
      "scripts/generate.ts",
      "scripts/export.ts",
      "scripts/quantize.ts",
      "scripts/dequantize.ts",
      "scripts/demo_quantize.ts",
      "scripts/paging_demo.ts",
      "scripts/table.ts",
      "scripts/long_context.ts",
      "scripts/notebooks.ts",
      "bench/gemm_vs_torch.ts",
      "bench/train_vs_torch.ts",
      "bench/peer_llama_cpp.ts",
    ]
  ) {
    assert(paths.has(path), `deno.json no longer runs ${path}`);
  }
  // One flag per script that the extraction must find: each kind of spec (both of fit's, the optional
  // --resume, the bench's parseCommandLine) is read.
  const sample: Record<string, string[]> = {
    "scripts/train.ts": ["max-chars", "resume"],
    "scripts/finetune.ts": ["verify", "resume"],
    "scripts/fit.ts": ["no-master-weights", "inference", "merged"],
    "scripts/generate.ts": ["no-bos"],
    "scripts/export.ts": ["allow-missing-byte-tokens"],
    "scripts/quantize.ts": ["no-double-quant"],
    "scripts/dequantize.ts": ["dtype"],
    "scripts/demo_quantize.ts": ["backend"],
    "scripts/paging_demo.ts": ["layers"],
    "scripts/table.ts": ["readme-from"],
    "scripts/long_context.ts": ["no-offload"],
    "scripts/notebooks.ts": ["nbclient", "plain", "port"],
    "bench/train_vs_torch.ts": ["only", "modes", "seq"],
    "bench/peer_llama_cpp.ts": ["quick", "cache"],
  };
  const failures: string[] = [];
  const check = async ({ path, args }: { path: string; args: string[] }) => {
    const what = `${path}${args.length ? ` ${args.join(" ")}` : ""}`;
    const flags = sourceFlags(await Deno.readTextFile(`${ROOT}${path}`));
    for (const f of sample[path] ?? []) {
      if (!flags.includes(f)) failures.push(`${what}: --${f} not found in its flag specs`);
    }
    const long = await runPath(path, [...args, "--help"]);
    const short = await runPath(path, [...args, "-h"]);
    if (long.code !== 0) failures.push(`${what} --help: exit ${long.code}: ${long.stderr}`);
    if (short.code !== 0) failures.push(`${what} -h: exit ${short.code}: ${short.stderr}`);
    if (short.stdout !== long.stdout) failures.push(`${what}: -h does not print what --help prints`);
    for (const p of helpProblems(long.stdout.trimEnd(), flags)) failures.push(`${what} --help: ${p}`);
  };
  // Two at a time: each is a Deno process that loads the library's modules.
  const queue = [...commands];
  await Promise.all([0, 1].map(async () => {
    for (let c = queue.shift(); c; c = queue.shift()) await check(c);
  }));
  assertEquals(failures, []);
});
