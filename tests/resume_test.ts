// Crash-safe training: a run killed with SIGKILL at any point (mid-step, mid-checkpoint-write, before its
// marker, while pruning) and resumed each time ends with trainable weights and optimizer states
// bit-identical to an uninterrupted run, in full, LoRA and QLoRA modes and with paging under a budget.
// The runs are child processes (tests/_resume_child.ts: 12 steps, a checkpoint every 4, the last 2 kept)
// paused at a named point through QLORA_TEST_PAUSE_AT and killed there from outside.
import { assert, assertEquals, assertRejects, assertStringIncludes } from "@std/assert";
import {
  AdamW,
  AdamW8bit,
  datasetSource,
  getDevice,
  Linear,
  listCheckpoints,
  LlamaModel,
  PagedAdamW,
  readSafetensors,
  saveModelDir,
  type StateTensor,
  Tensor,
  TextDataset,
  Trainer,
} from "../mod.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const CHILD = `${ROOT}tests/_resume_child.ts`;
const STEPS = 12;
const decoder = new TextDecoder();

interface Run {
  code: number;
  out: string;
}

/**
 * Runs a command; with `killWhen`, kills it with SIGKILL as soon as its output contains that text
 * (the child then has paused at a QLORA_TEST_PAUSE_AT point, or has just printed a step).
 */
async function run(args: string[], env: Record<string, string> = {}, killWhen?: string): Promise<Run> {
  const child = new Deno.Command(Deno.execPath(), {
    args,
    env: { OMP_NUM_THREADS: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let out = "", killed = false;
  const read = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) {
      out += decoder.decode(chunk, { stream: true });
      if (killWhen && !killed && out.includes(killWhen)) {
        killed = true;
        child.kill("SIGKILL");
      }
    }
  };
  await Promise.all([read(child.stdout), read(child.stderr)]);
  const status = await child.status;
  if (killWhen) {
    assert(killed, `never reached "${killWhen}":\n${out}`);
    assertEquals(status.signal, "SIGKILL", out);
  }
  return { code: status.code, out };
}

function child(spec: Record<string, unknown>, env: Record<string, string> = {}, killWhen?: string) {
  return run(["run", "-A", CHILD, JSON.stringify(spec)], env, killWhen);
}

function result(r: Run): { resumedFrom: { step: number } | null; paging: { pageOuts: number } | null } {
  assertEquals(r.code, 0, r.out);
  const line = r.out.split("\n").find((l) => l.startsWith("RESULT "));
  assert(line, r.out);
  return JSON.parse(line.slice("RESULT ".length));
}

/** Every tensor of two safetensors files, bit for bit (the first difference named), then the files whole. */
async function assertSameFile(a: string, b: string): Promise<void> {
  const [fa, fb] = [await readSafetensors(a), await readSafetensors(b)];
  assertEquals([...fb.keys()], [...fa.keys()], b);
  for (const [name, t] of fa) {
    const u = fb.get(name)!.data;
    const at = t.data.findIndex((x, i) => x !== u[i]);
    assert(
      at < 0 && t.data.length === u.length,
      `${b}: ${name} differs from the uninterrupted run at byte ${at}`,
    );
  }
  assertEquals(await Deno.readFile(b), await Deno.readFile(a), b);
}

async function assertSameRun(a: string, b: string, weights: string, steps = STEPS): Promise<void> {
  const last = `checkpoint-${steps.toString().padStart(6, "0")}`;
  for (const f of [weights, "optimizer.safetensors"]) {
    await assertSameFile(`${a}/${last}/${f}`, `${b}/${last}/${f}`);
  }
  await assertSameFile(`${a}/${weights}`, `${b}/${weights}`); // the final export
  const state = async (dir: string) => {
    const s = JSON.parse(await Deno.readTextFile(`${dir}/${last}/trainer_state.json`));
    const history = s.history.map((
      h: Record<string, number>,
    ) => [h.step, h.loss, h.lr, h.gradNorm, h.evalLoss]);
    return { ...s, history };
  };
  const [sa, sb] = [await state(a), await state(b)];
  assertEquals(sb.history.length, steps);
  assertEquals(sb, sa); // losses, learning rates, norms, data position, dropout counters, step count
  const names = async (dir: string) => (await listCheckpoints(dir)).map((c) => `${c.name} ${c.complete}`);
  assertEquals(await names(b), await names(a));
}

const CASES: { name: string; spec: Record<string, unknown>; kills: string[] }[] = [
  {
    name: "full fine-tuning (f32, AdamW)",
    spec: { mode: "full" },
    kills: ["step:3:backward", "checkpoint:8:optimizer", "step:10:optimizer"],
  },
  {
    name: "LoRA (bf16 with f32 masters, AdamW8bit, dropout, prompt/completion data, accumulation)",
    spec: {
      mode: "lora",
      dtype: "bf16",
      optimizer: "adamw8bit",
      dropout: 0.1,
      data: "examples",
      gradAccumulation: 2,
    },
    kills: ["checkpoint:4:optimizer", "checkpoint:8:marker", "checkpoint:12:prune"],
  },
  {
    name: "QLoRA (PagedAdamW)",
    spec: { mode: "qlora" },
    kills: ["checkpoint:4:weights", "after:step 6", "checkpoint:12:optimizer"],
  },
  {
    name: "QLoRA paged under a budget (pages evicted by pressure and in the host pool at checkpoints)",
    spec: { mode: "qlora", budgetMargin: 200_000, dropout: 0.1, evictOnEven: true },
    kills: ["step:5:backward", "checkpoint:8:prune", "checkpoint:12:marker"],
  },
];

/**
 * The step a resume after a kill at `point` continues from (checkpoints every 4 steps): the last multiple of
 * 4 before a step killed mid-way, the one before a checkpoint killed while written, the checkpoint itself
 * when only pruning was left; null for an asynchronous kill (wherever it landed).
 */
function resumesAt(point: string): number | null {
  const m = /^(step|checkpoint):(\d+):(\w+)$/.exec(point);
  if (!m) return null;
  const n = Number(m[2]);
  if (m[1] === "checkpoint") return m[3] === "prune" ? n : n - 4;
  return Math.floor((n - 1) / 4) * 4;
}

Deno.test("resume: killed at any point and resumed, every mode ends bit-identical to an uninterrupted run", async (t) => {
  const tmp = await Deno.makeTempDir();
  try {
    const outcomes = await Promise.all(CASES.map(async (c, i) => {
      const a = `${tmp}/${i}-uninterrupted`, b = `${tmp}/${i}-killed`;
      const whole = result(await child({ ...c.spec, dir: a, resume: false }));
      const log: string[] = [];
      let completed = 0; // the newest complete checkpoint's step
      let previous: string | null = null;
      for (const point of c.kills) {
        const r = point.startsWith("after:")
          ? await child({ ...c.spec, dir: b, resume: true }, {}, `${point.slice(6)}\n`)
          : await child(
            { ...c.spec, dir: b, resume: true },
            { QLORA_TEST_PAUSE_AT: point },
            `QLORA_TEST_PAUSED ${point}`,
          );
        if (previous) checkResumed(r.out, b, previous, completed);
        const m = /^checkpoint:(\d+):(\w+)$/.exec(point);
        const list = await listCheckpoints(b);
        if (m && m[2] !== "prune") {
          const torn = list.find((e) => e.step === Number(m[1]));
          assert(torn && !torn.complete, `${point}: ${JSON.stringify(list)}`);
          if (m[2] === "optimizer") {
            const files = [...Deno.readDirSync(torn.path)].map((e) => e.name);
            assert(files.some((f) => f.startsWith(".qlora-tmp-")), `no half-written file: ${files}`);
          }
        }
        completed = Math.max(0, ...list.filter((e) => e.complete).map((e) => e.step));
        assertEquals(completed, resumesAt(point) ?? completed, `after a kill at ${point}`);
        log.push(`${point} -> resumes at ${completed}`);
        previous = point;
      }
      const last = await child({ ...c.spec, dir: b, resume: true });
      checkResumed(last.out, b, previous!, completed);
      const resumed = result(last);
      assertEquals(resumed.resumedFrom?.step ?? 0, completed);
      if (c.spec.budgetMargin) {
        assert(whole.paging!.pageOuts > 0 && resumed.paging!.pageOuts > 0, "paging was not active");
      }
      return { c, a, b, log };
    }));
    for (const { c, a, b, log } of outcomes) {
      await t.step(`${c.name}: killed at ${log.join(", ")}`, async () => {
        await assertSameRun(a, b, c.spec.mode === "full" ? "model.safetensors" : "adapter_model.safetensors");
      });
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

/** The run after a kill at `point` said what it skipped and where it resumed. */
function checkResumed(out: string, dir: string, point: string, completed: number): void {
  const m = /^checkpoint:(\d+):(\w+)$/.exec(point);
  if (m && m[2] !== "prune") {
    assertStringIncludes(out, `skipping ${dir}/checkpoint-${m[1].padStart(6, "0")}: incomplete`);
  }
  assertStringIncludes(
    out,
    completed === 0
      ? `no complete checkpoint in ${dir}: starting at step 0`
      : `resumed from ${dir}/checkpoint-${String(completed).padStart(6, "0")}: step ${completed} of ${STEPS}`,
  );
}

// ---------------------------------------------------------------------------------------------------------

const CONFIG = {
  vocabSize: 259,
  dim: 32,
  layers: 1,
  heads: 4,
  kvHeads: 2,
  hiddenDim: 64,
  maxSeq: 16,
  normEps: 1e-5,
  ropeTheta: 10000,
};
const TEXT = "the quick brown fox jumps over the lazy dog. ".repeat(30);

Deno.test("resume: another configuration is refused naming each difference; a torn checkpoint given by path is refused", async () => {
  const dir = await Deno.makeTempDir();
  const messages: string[] = [];
  const options = { steps: 4, batchSize: 2, seq: 8, evalBatches: 1, checkpointDir: dir, checkpointEvery: 2 };
  const data = () => datasetSource(TextDataset.fromText(TEXT), 1);
  try {
    {
      using model = new LlamaModel(CONFIG, { mode: "lora", rank: 2 });
      using trainer = new Trainer(model, data(), { ...options, onMessage: (m) => messages.push(m) });
      await trainer.train();
      // A checkpoint holds the bytes the ledger counts under adapters and optimizer_states, no more.
      let bytes = 0;
      for (const f of ["adapter_model.safetensors", "optimizer.safetensors"]) {
        for (const t of (await readSafetensors(`${dir}/checkpoint-000004/${f}`)).values()) {
          bytes += t.data.length;
        }
      }
      const ledger = getDevice().memory().current;
      assertEquals(bytes, ledger.adapters + ledger.optimizer_states);
    }
    using model = new LlamaModel(CONFIG, { mode: "lora", rank: 2 });
    using trainer = new Trainer(model, data(), {
      ...options,
      lr: 5e-3,
      resume: true,
      runInfo: { base: "x" },
    });
    const error = await assertRejects(() => trainer.train(), Error, "the run's configuration differs");
    assertStringIncludes(error.message, "trainer.lr: 0.001 in the checkpoint, 0.005 now");
    assertStringIncludes(error.message, 'run.base: absent in the checkpoint, "x" now');
    using other = new LlamaModel(CONFIG, { mode: "lora", rank: 4 });
    using t2 = new Trainer(other, data(), { ...options, resume: true });
    await assertRejects(() => t2.train(), Error, "model.adapters.rank: 2 in the checkpoint, 4 now");
    // The newest checkpoint torn: resume skips it for the one before, with a message.
    await Deno.remove(`${dir}/checkpoint-000004/checkpoint_complete.json`);
    using m3 = new LlamaModel(CONFIG, { mode: "lora", rank: 2 });
    const said: string[] = [];
    using t3 = new Trainer(m3, data(), { ...options, resume: true, onMessage: (m) => said.push(m) });
    assertEquals((await t3.resume()).step, 2);
    assertStringIncludes(said[0], "checkpoint-000004: incomplete, no checkpoint_complete.json");
    using m4 = new LlamaModel(CONFIG, { mode: "lora", rank: 2 });
    using t4 = new Trainer(m4, data(), { ...options, resume: `${dir}/checkpoint-000004` });
    await assertRejects(() => t4.train(), Error, "the checkpoint is incomplete");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

function bits(t: Tensor): Uint8Array {
  const a = t.toArray();
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function readAll(states: StateTensor[]): Map<string, Uint8Array> {
  return new Map(states.map((s) => [s.name, s.read()]));
}

Deno.test("optimizers: states exported and imported bit for bit, paged states wherever their pages are", () => {
  type Make = (l: Linear) => AdamW | PagedAdamW | AdamW8bit;
  const makers: [string, Make][] = [
    ["AdamW bf16 + masters", (l) => new AdamW(l.trainables(), { lr: 1e-2 })],
    ["AdamW8bit", (l) => new AdamW8bit(l.trainables(), { lr: 1e-2 })],
    ["PagedAdamW", (l) => new PagedAdamW(l.trainables(), { lr: 1e-2, pageSize: 1024 })],
  ];
  for (const [name, make] of makers) {
    const dtype = name.includes("bf16") ? "bf16" : "f32";
    using a = new Linear(32, 24, { dtype, seed: 1 }), b = new Linear(32, 24, { dtype, seed: 2 });
    using x = Tensor.randn([4, 32], { dtype, seed: 3 });
    const stepBoth = (opts: (AdamW | PagedAdamW | AdamW8bit)[], layers: Linear[]) => {
      opts.forEach((o, i) => {
        using y = layers[i].forward(x);
        layers[i].zeroGrad();
        layers[i].backward(y).dispose();
        o.step();
      });
    };
    using oa = make(a);
    stepBoth([oa], [a]);
    stepBoth([oa], [a]);
    using ob = make(b);
    const saved = readAll(oa.stateTensors());
    if (oa instanceof PagedAdamW && ob instanceof PagedAdamW) {
      oa.evictAll(); // in the host pool now: read there, the same bytes
      assertEquals(readAll(oa.stateTensors()), saved);
      ob.evictAll(); // written into host pages, brought back by the next step
    }
    for (const s of ob.stateTensors()) s.write(saved.get(s.name)!);
    b.weight.copyFrom(a.weight);
    ob.stepCount = oa.stepCount;
    assertEquals(readAll(ob.stateTensors()), saved, name);
    stepBoth([oa, ob], [a, b]);
    assertEquals(bits(b.weight), bits(a.weight), name);
    assertEquals(readAll(ob.stateTensors()), readAll(oa.stateTensors()), name);
  }
});

// ---------------------------------------------------------------------------------------------------------

Deno.test("train --resume: killed mid-step, resumed by the command, ends bit-identical", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const args = (out: string, ...more: string[]) => [
      "run",
      "-A",
      `${ROOT}scripts/train.ts`,
      ...["--mode", "lora", "--corpus", "sotu", "--max-chars", "20000", "--steps", "4", "--batch", "2"],
      ...["--seq", "16", "--checkpoint-every", "2", "--out", out, ...more],
    ];
    const whole = await run(args(`${tmp}/a`));
    assertEquals(whole.code, 0, whole.out);
    await run(args(`${tmp}/b`), { QLORA_TEST_PAUSE_AT: "step:3:backward" }, "QLORA_TEST_PAUSED");
    const resumed = await run(args(`${tmp}/b`, "--resume"));
    assertEquals(resumed.code, 0, resumed.out);
    assertStringIncludes(resumed.out, `resumed from ${tmp}/b/checkpoint-000002: step 2 of 4`);
    await assertSameRun(`${tmp}/a`, `${tmp}/b`, "adapter_model.safetensors", 4);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("finetune --resume: continues a finished run (nothing to do) and refuses another --lr by name", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const model = `${tmp}/tiny-llama`;
    const config = { ...CONFIG, vocabSize: 64, maxSeq: 32 };
    {
      using base = new LlamaModel(config, { mode: "full", seed: 1, device: getDevice("cpu") });
      await saveModelDir(base, model, { dtype: "f32", config: { bos_token_id: 1, eos_token_id: 2 } });
    }
    for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
      await Deno.copyFile(`${ROOT}tests/data/tokenizer/tiny/${f}`, `${model}/${f}`);
    }
    const texts = Array.from(
      { length: 20 },
      (_, i) => JSON.stringify({ text: `hello world ${i} `.repeat(4) }),
    );
    await Deno.writeTextFile(`${tmp}/data.jsonl`, texts.join("\n") + "\n");
    const args = (...more: string[]) => [
      "run",
      "-A",
      `${ROOT}scripts/finetune.ts`,
      ...["--model", model, "--data", `${tmp}/data.jsonl`, "--mode", "lora", "--steps", "4", "--batch", "2"],
      ...["--seq", "16", "--checkpoint-every", "2", "--out", `${tmp}/out`, ...more],
    ];
    const first = await run(args());
    assertEquals(first.code, 0, first.out);
    const again = await run(args("--resume"));
    assertEquals(again.code, 0, again.out);
    assertStringIncludes(again.out, `resumed from ${tmp}/out/checkpoint-000004: step 4 of 4`);
    const other = await run(args("--resume", `${tmp}/out`, "--lr", "1e-3"));
    assertEquals(other.code, 1, other.out);
    assertStringIncludes(other.out, "trainer.lr: 0.0002 in the checkpoint, 0.001 now");
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
