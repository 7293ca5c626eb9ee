// Hostile or broken files are refused with a SafetensorsError naming what is wrong, and nothing is written:
// duplicate header keys (JSON.parse would keep the last), a null or malformed quant_state, non-finite
// quantization constants (they would restore as NaN weights with exit status 0).
import { assert, assertRejects } from "@std/assert";
import {
  dequantizeCheckpoint,
  getDevice,
  openModelDir,
  quantizeCheckpoint,
  readSafetensors,
  SafetensorsError,
  writeSafetensors,
} from "../mod.ts";

const device = getDevice("cpu");

/** A safetensors file from a header text and data bytes, written by hand. */
async function rawFile(path: string, header: string, data: Uint8Array): Promise<void> {
  const h = new TextEncoder().encode(header.padEnd(Math.ceil(header.length / 8) * 8, " "));
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  await Deno.writeFile(path, out);
}

Deno.test("hostile: a header with a key twice, __metadata__ or a tensor or a field, is refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const cases: [string, string][] = [
      [
        '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
        '"a"',
      ],
      ['{"__metadata__":{"x":"1"},"__metadata__":{"x":"2"}}', '"__metadata__"'],
      ['{"__metadata__":{"x":"1","x":"2"}}', '"x"'],
      ['{"a":{"dtype":"U8","dtype":"F32","shape":[1],"data_offsets":[0,1]}}', '"dtype"'],
    ];
    for (const [header, key] of cases) {
      await rawFile(`${dir}/f.safetensors`, header, new Uint8Array(1));
      await assertRejects(
        () => readSafetensors(`${dir}/f.safetensors`),
        SafetensorsError,
        `the key ${key} twice`,
      );
    }
    // Keys that only look alike, and strings with escaped quotes, are fine.
    await rawFile(
      `${dir}/ok.safetensors`,
      '{"__metadata__":{"a\\"b":"{\\"a\\":1}","a":"x"},"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
      new Uint8Array(1),
    );
    assert((await readSafetensors(`${dir}/ok.safetensors`)).has("b"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** A 4-bit file (quantize CLI layout) whose tensors `edit` may change, then dequantized: must fail, nothing written. */
async function refusedAfter(
  edit: (t: Map<string, { dtype: string; shape: number[]; data: Uint8Array }>) => void,
  message: string,
) {
  const dir = await Deno.makeTempDir();
  try {
    const w = new Float32Array(128 * 64).map((_, i) => Math.sin(i) * 0.1);
    await writeSafetensors(`${dir}/in.safetensors`, [{
      name: "w",
      dtype: "F32",
      shape: [128, 64],
      data: new Uint8Array(w.buffer),
    }]);
    await quantizeCheckpoint(device, `${dir}/in.safetensors`, `${dir}/q.safetensors`);
    const file = await readSafetensors(`${dir}/q.safetensors`);
    const tensors = new Map(
      [...file.entries()].map((
        [k, t],
      ) => [k, { dtype: t.info.dtype as string, shape: [...t.info.shape], data: t.data.slice() }]),
    );
    edit(tensors);
    await writeSafetensors(
      `${dir}/bad.safetensors`,
      [...tensors].map(([name, t]) => ({ name, dtype: t.dtype as "U8", shape: t.shape, data: t.data })),
    );
    await assertRejects(
      () => dequantizeCheckpoint(device, `${dir}/bad.safetensors`, `${dir}/out.safetensors`),
      SafetensorsError,
      message,
    );
    await assertRejects(() => Deno.stat(`${dir}/out.safetensors`), Deno.errors.NotFound);
    const left = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.startsWith(".qlora-tmp-"));
    assert(left.length === 0, `temporary files left: ${left}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const state = "w.quant_state.bitsandbytes__nf4";
const json = (t: Map<string, { data: Uint8Array }>) =>
  JSON.parse(new TextDecoder().decode(t.get(state)!.data));
const setJson = (t: Map<string, { shape: number[]; data: Uint8Array }>, v: unknown) => {
  const data = new TextEncoder().encode(JSON.stringify(v));
  t.set(state, { ...t.get(state)!, shape: [data.length], data } as never);
};
const poke = (t: Map<string, { data: Uint8Array }>, key: string, value: number) =>
  new Float32Array(t.get(key)!.data.buffer, t.get(key)!.data.byteOffset, t.get(key)!.data.byteLength / 4)[0] =
    value;

Deno.test("hostile: a null or malformed quant_state is refused naming the weight", async () => {
  await refusedAfter((t) => setJson(t, null), "Cannot dequantize w: its quant_state is null, not an object");
  await refusedAfter((t) => setJson(t, [1, 2]), "not an object");
  await refusedAfter((t) => setJson(t, { ...json(t), nested_offset: 1e39 }), "not a finite f32");
});

Deno.test("hostile: NaN or Inf constants are refused naming the tensor, with nothing written", async () => {
  await refusedAfter((t) => poke(t, "w.nested_absmax", NaN), "w.nested_absmax[0] is NaN");
  await refusedAfter((t) => poke(t, "w.nested_quant_map", Infinity), "w.nested_quant_map[0] is Infinity");
  await refusedAfter((t) => {
    // without double quantization, the absmax itself
    const s = json(t);
    delete s.nested_blocksize, delete s.nested_offset;
    setJson(t, s);
    const blocks = (128 * 64) / 64;
    const absmax = new Float32Array(blocks).fill(0.1);
    absmax[5] = -Infinity;
    t.set("w.absmax", { dtype: "F32", shape: [blocks], data: new Uint8Array(absmax.buffer) } as never);
    t.delete("w.nested_absmax"), t.delete("w.nested_quant_map");
  }, "w.absmax[5] is -Infinity");
});

Deno.test("hostile: a model directory with a duplicate key in its weights file is refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.copyFile(new URL("./data/hf/gqa_f16/config.json", import.meta.url), `${dir}/config.json`);
    await rawFile(
      `${dir}/model.safetensors`,
      '{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
      new Uint8Array(1),
    );
    await assertRejects(() => openModelDir(dir), SafetensorsError, 'the key "x" twice');
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
