import { assert, assertEquals, assertRejects } from "@std/assert";
import { SafetensorsError } from "../lib/base/errors.ts";
import {
  bytesPerElement,
  parseSafetensorsHeader,
  type SafetensorsDtype,
} from "../lib/io/safetensors_header.ts";
import { readSafetensors, SafetensorsReader } from "../lib/io/safetensors_reader.ts";
import { SafetensorsWriter, writeSafetensors } from "../lib/io/safetensors_writer.ts";
import { encode, le64, pattern, rawFile, withDir } from "./_safetensors_files.ts";

Deno.test("round trip of every dtype, an empty tensor and a 0-d tensor, in the order given", async () => {
  await withDir(async (dir) => {
    const dtypes: SafetensorsDtype[] = ["F32", "F16", "BF16", "U8", "I32", "I64"];
    const tensors = dtypes.map((dtype, i) => ({
      name: `t.${dtype.toLowerCase()}`,
      dtype,
      shape: [3, 2],
      data: pattern(6 * bytesPerElement(dtype), i * 31),
    }));
    tensors.push({ name: "empty", dtype: "F32", shape: [0, 4], data: new Uint8Array(0) });
    tensors.push({ name: "scalar", dtype: "I64", shape: [], data: pattern(8, 99) });
    tensors.push({ name: "after.scalar", dtype: "BF16", shape: [1, 1, 1], data: pattern(2, 5) });
    const path = `${dir}/all.safetensors`;
    await writeSafetensors(path, tensors);
    const file = await readSafetensors(path);
    assertEquals([...file.keys()], tensors.map((t) => t.name));
    let offset = 0;
    for (const t of tensors) {
      const got = file.get(t.name)!;
      assertEquals(got.info, {
        name: t.name,
        dtype: t.dtype,
        shape: t.shape,
        byteLength: t.data.length,
        dataOffset: offset,
      });
      assertEquals(got.data, t.data, t.name);
      offset += t.data.length;
    }
    using reader = await SafetensorsReader.open(path);
    assertEquals(reader.metadata, {});
    assertEquals(await reader.read("empty"), new Uint8Array(0));
    assertEquals(reader.fileSize, (await Deno.stat(path)).size);
  });
});

Deno.test("metadata round trip, including non-ASCII text; absent metadata reads as {}", async () => {
  await withDir(async (dir) => {
    const metadata = { format: "pt", note: "poids quantifiés ✓", empty: "" };
    await writeSafetensors(`${dir}/m.safetensors`, [{
      name: "x",
      dtype: "U8",
      shape: [1],
      data: pattern(1, 0),
    }], metadata);
    using reader = await SafetensorsReader.open(`${dir}/m.safetensors`);
    assertEquals(reader.metadata, metadata);
    await writeSafetensors(`${dir}/none.safetensors`, []);
    using none = await SafetensorsReader.open(`${dir}/none.safetensors`);
    assertEquals(none.metadata, {});
    assertEquals(none.tensors, []);
  });
});

Deno.test("the header is padded with spaces so that the data starts at a multiple of 8", async () => {
  await withDir(async (dir) => {
    for (let len = 1; len <= 9; len++) {
      const path = `${dir}/p${len}.safetensors`;
      await writeSafetensors(path, [{
        name: "n".repeat(len),
        dtype: "U8",
        shape: [3],
        data: pattern(3, len),
      }]);
      const bytes = await Deno.readFile(path);
      const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
      assertEquals((8 + n) % 8, 0, `name length ${len}`);
      const text = new TextDecoder().decode(bytes.subarray(8, 8 + n));
      assertEquals(text, text.trimEnd() + " ".repeat(n - text.trimEnd().length));
      assert(n - text.trimEnd().length < 8, "at most 7 bytes of padding");
      assertEquals(bytes.subarray(8 + n), pattern(3, len));
      assertEquals(parseSafetensorsHeader(bytes.subarray(8, 8 + n), bytes.length).dataStart, 8 + n);
    }
  });
});

Deno.test("a tiny file matches a hand-built byte layout, and a hand-built file reads back", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/tiny.safetensors`;
    await writeSafetensors(path, [{ name: "a", dtype: "U8", shape: [2], data: new Uint8Array([1, 2]) }]);
    const json = '{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}'; // 53 bytes, padded to 56
    const expected = [...le64(56), ...encode(json), 0x20, 0x20, 0x20, 1, 2];
    assertEquals([...await Deno.readFile(path)], expected);

    // The other way: a file written by hand (as the reference implementation would) with metadata.
    const header = '{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]},' +
      '"b":{"dtype":"I32","shape":[],"data_offsets":[8,12]}}';
    const data = new Uint8Array([...new Uint8Array(new Float32Array([1.5, -2]).buffer), 7, 0, 0, 0]);
    await Deno.writeFile(`${dir}/hand.safetensors`, rawFile(header, data));
    const file = await readSafetensors(`${dir}/hand.safetensors`);
    assertEquals(new Float32Array(file.get("w")!.data.buffer), new Float32Array([1.5, -2]));
    assertEquals(file.get("b")!.info.shape, []);
    assertEquals(new Int32Array(file.get("b")!.data.buffer)[0], 7);
  });
});

Deno.test("streaming writer: chunked writes, empty tensors skipped or written, size as announced", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/stream.safetensors`;
    const big = pattern(1000, 3), small = pattern(12, 200);
    const writer = await SafetensorsWriter.create(path, [
      { name: "big", dtype: "I32", shape: [10, 25] },
      { name: "none", dtype: "F16", shape: [0] },
      { name: "small", dtype: "F16", shape: [6] },
      { name: "tail", dtype: "U8", shape: [0] },
    ], { step: "3" });
    for (let i = 0; i < big.length; i += 7) await writer.write("big", big.subarray(i, i + 7));
    await writer.write("big", new Uint8Array(0));
    for (const b of small) await writer.write("small", new Uint8Array([b])); // "none" needs no call
    await writer.write("tail", new Uint8Array(0));
    await writer.close();
    await writer.close(); // idempotent
    assertEquals((await Deno.stat(path)).size, writer.fileSize);
    const file = await readSafetensors(path);
    assertEquals(file.get("big")!.data, big);
    assertEquals(file.get("small")!.data, small);
    assertEquals(file.get("none")!.info.byteLength, 0);
  });
});

Deno.test("writer errors: too many or too few bytes, wrong order, unknown or repeated tensors", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/w.safetensors`;
    const entries = [
      { name: "a", dtype: "U8" as const, shape: [4] },
      { name: "b", dtype: "U8" as const, shape: [2] },
    ];
    let w = await SafetensorsWriter.create(path, entries);
    await assertRejects(
      () => w.write("a", new Uint8Array(5)),
      SafetensorsError,
      "would get 5 bytes, its shape holds 4",
    );
    await w.write("a", new Uint8Array(3));
    await assertRejects(() => w.write("a", new Uint8Array(2)), SafetensorsError, "would get 5 bytes");
    await assertRejects(
      () => w.write("b", new Uint8Array(2)),
      SafetensorsError,
      'expected bytes of "a" (3 of 4)',
    );
    await assertRejects(() => w.write("c", new Uint8Array(1)), SafetensorsError, "is not in the file");
    await w.write("a", new Uint8Array(1));
    await w.write("b", new Uint8Array(1));
    await assertRejects(() => w.write("a", new Uint8Array(0)), SafetensorsError, "already written");
    await assertRejects(
      () => w.close(),
      SafetensorsError,
      `Cannot write ${path}: tensor "b" got 1 of 2 bytes`,
    );
    await assertRejects(() => w.write("b", new Uint8Array(1)), SafetensorsError, "closed");

    w = await SafetensorsWriter.create(path, entries);
    await assertRejects(() => w.write("b", new Uint8Array(2)), SafetensorsError, "comes later");
    await assertRejects(() => w.close(), SafetensorsError, `tensor "a" got 0 of 4 bytes`);

    // `await using` releases the file without a second error on an error path.
    await assertRejects(async () => {
      await using w2 = await SafetensorsWriter.create(path, entries);
      await w2.write("a", new Uint8Array(4));
      throw new RangeError("producer failed");
    }, RangeError);

    const bad: [Parameters<typeof SafetensorsWriter.create>[1], string][] = [
      [[...entries, { name: "a", dtype: "F32", shape: [1] }], `tensor "a" appears twice`],
      [[{ name: "", dtype: "U8", shape: [1] }], "non-empty"],
      [[{ name: "__metadata__", dtype: "U8", shape: [1] }], "__metadata__"],
      [[{ name: "x", dtype: "F64" as SafetensorsDtype, shape: [1] }], `dtype "F64"`],
      [[{ name: "x", dtype: "U8", shape: [-1] }], "shape [-1]"],
      [[{ name: "x", dtype: "U8", shape: [1.5] }], "shape [1.5]"],
      [[{ name: "x", dtype: "I64", shape: [2 ** 30, 2 ** 30] }], "too large"],
    ];
    for (const [list, message] of bad) {
      await assertRejects(() => SafetensorsWriter.create(path, list), SafetensorsError, message);
    }
    await assertRejects(
      () => SafetensorsWriter.create(path, entries, { n: 3 as unknown as string }),
      SafetensorsError,
      `metadata "n" must be a string`,
    );
    await assertRejects(
      () => writeSafetensors(path, [{ name: "x", dtype: "F32", shape: [2], data: new Uint8Array(7) }]),
      SafetensorsError,
      `tensor "x" has 7 bytes of data, F32 [2] needs 8`,
    );
    await assertRejects(
      () => SafetensorsWriter.create(`${dir}/no/such/dir/x.safetensors`, []),
      SafetensorsError,
    );
  });
});

Deno.test("the writer is atomic: an aborted, incomplete or failed file leaves the old one intact", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/base.safetensors`;
    const old = pattern(64, 1);
    await writeSafetensors(path, [{ name: "old", dtype: "U8", shape: [64], data: old }], { v: "1" });
    const oldBytes = await Deno.readFile(path);
    const entries = [{ name: "a", dtype: "U8" as const, shape: [4096] }];
    const unchanged = async (why: string) => {
      assertEquals(await Deno.readFile(path), oldBytes, `${why}: the old file changed`);
      assertEquals((await readSafetensors(path)).get("old")!.data, old);
      const left = [...Deno.readDirSync(dir)].map((e) => e.name);
      assertEquals(left, ["base.safetensors"], `${why}: a temporary file is left`);
    };

    // Midway, the old file is still whole and readable.
    let w = await SafetensorsWriter.create(path, entries);
    await w.write("a", pattern(1000, 5));
    assertEquals(await Deno.readFile(path), oldBytes, "create or write touched the target");
    await assertRejects(() => w.close(), SafetensorsError, `tensor "a" got 1000 of 4096 bytes`);
    await unchanged("incomplete close");

    await assertRejects(async () => {
      await using w2 = await SafetensorsWriter.create(path, entries);
      await w2.write("a", pattern(4096, 5));
      throw new RangeError("producer failed before close");
    }, RangeError);
    await unchanged("await using on an error path");

    await assertRejects(
      () => writeSafetensors(path, [{ name: "a", dtype: "U8", shape: [4096], data: pattern(10, 0) }]),
      SafetensorsError,
      "has 10 bytes of data",
    );
    await unchanged("writeSafetensors with short data");

    // A finished file replaces the old one whole.
    w = await SafetensorsWriter.create(path, entries);
    await w.write("a", pattern(4096, 5));
    await w.close();
    const file = await readSafetensors(path);
    assertEquals([...file.keys()], ["a"]);
    assertEquals(file.get("a")!.data, pattern(4096, 5));
    assertEquals((await Deno.stat(path)).size, w.fileSize);
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["base.safetensors"]);
  });
});

Deno.test("a process killed while writing leaves the previous file whole (not truncated)", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/tiny-base.safetensors`;
    const old = pattern(256, 3);
    await writeSafetensors(path, [{ name: "w", dtype: "U8", shape: [256], data: old }]);
    const module = new URL("../lib/io/safetensors_writer.ts", import.meta.url).href;
    const code = `
      import { SafetensorsWriter } from ${JSON.stringify(module)};
      const w = await SafetensorsWriter.create(${
      JSON.stringify(path)
    }, [{ name: "w", dtype: "U8", shape: [1 << 20] }]);
      await w.write("w", new Uint8Array(1 << 19));
      Deno.exit(3); // no cleanup at all, as a crash or a kill
    `;
    const out = await new Deno.Command(Deno.execPath(), { args: ["eval", code], stderr: "piped" }).output();
    assertEquals(out.code, 3, new TextDecoder().decode(out.stderr));
    assertEquals((await readSafetensors(path)).get("w")!.data, old);
    // What the crash left is a temporary file that .gitignore ignores, never the target half-written.
    const left = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assertEquals(left.length, 2);
    assert(left[0].startsWith(".qlora-tmp-") && left[1] === "tiny-base.safetensors", left.join(", "));
  });
});
