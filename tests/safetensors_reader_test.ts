import { assertEquals, assertRejects, assertStringIncludes, assertThrows } from "@std/assert";
import { SafetensorsError } from "../lib/base/errors.ts";
import { readSafetensors, SafetensorsReader } from "../lib/io/safetensors_reader.ts";
import { writeSafetensors } from "../lib/io/safetensors_writer.ts";
import { encode, pattern, rawFile, withDir } from "./_safetensors_files.ts";

Deno.test("every malformed file is a SafetensorsError naming the file, never a crash", async () => {
  await withDir(async (dir) => {
    const t = (body: string) => `{"t":${body}}`;
    const ok = '{"dtype":"F32","shape":[2],"data_offsets":[0,8]}';
    const eight = new Uint8Array(8);
    const cases: [string, Uint8Array, string][] = [
      ["empty file", new Uint8Array(0), "fewer than the 8"],
      ["shorter than 8 bytes", new Uint8Array(5), "fewer than the 8"],
      ["header length past the end", rawFile("{}", eight, 1000n), "header length 1000 is past the end"],
      ["header length 2^64-1", rawFile("{}", eight, 2n ** 64n - 1n), "past the end"],
      ["invalid UTF-8", rawFile(new Uint8Array([0x7b, 0xff, 0xfe, 0x7d])), "not valid UTF-8"],
      ["invalid JSON", rawFile("{not json"), "not valid JSON"],
      ["empty header", rawFile(""), "not valid JSON"],
      ["header is an array", rawFile("[1,2]"), "must be a JSON object"],
      ["header is null", rawFile("null"), "must be a JSON object"],
      ["header is a number", rawFile("3"), "must be a JSON object"],
      ["entry is not an object", rawFile(t("3")), `tensor "t" must be an object`],
      ["entry is an array", rawFile(t("[]")), `tensor "t" must be an object`],
      ["missing dtype", rawFile(t('{"shape":[2],"data_offsets":[0,8]}'), eight), "dtype undefined"],
      ["missing shape", rawFile(t('{"dtype":"F32","data_offsets":[0,8]}'), eight), "shape undefined"],
      ["missing data_offsets", rawFile(t('{"dtype":"F32","shape":[2]}'), eight), "data_offsets undefined"],
      ["unknown dtype", rawFile(t('{"dtype":"F64","shape":[1],"data_offsets":[0,8]}'), eight), `dtype "F64"`],
      ["shape not an array", rawFile(t('{"dtype":"U8","shape":2,"data_offsets":[0,2]}')), "shape 2"],
      ["negative dimension", rawFile(t('{"dtype":"U8","shape":[-2],"data_offsets":[0,0]}')), "shape [-2]"],
      [
        "fractional dimension",
        rawFile(t('{"dtype":"U8","shape":[1.5],"data_offsets":[0,0]}')),
        "shape [1.5]",
      ],
      ["string dimension", rawFile(t('{"dtype":"U8","shape":["2"],"data_offsets":[0,2]}')), `shape ["2"]`],
      [
        "unsafe dimension",
        rawFile(t('{"dtype":"U8","shape":[9007199254740993],"data_offsets":[0,0]}')),
        "shape",
      ],
      ["one offset", rawFile(t('{"dtype":"U8","shape":[0],"data_offsets":[0]}')), "data_offsets [0]"],
      ["three offsets", rawFile(t('{"dtype":"U8","shape":[0],"data_offsets":[0,0,0]}')), "data_offsets"],
      ["negative offset", rawFile(t('{"dtype":"U8","shape":[0],"data_offsets":[-1,-1]}')), "data_offsets"],
      [
        "begin after end",
        rawFile(t('{"dtype":"U8","shape":[0],"data_offsets":[4,0]}'), eight),
        "data_offsets [4,0]",
      ],
      [
        "string offset",
        rawFile(t('{"dtype":"U8","shape":[8],"data_offsets":[0,"8"]}'), eight),
        "data_offsets",
      ],
      [
        "fractional offset",
        rawFile(t('{"dtype":"U8","shape":[0],"data_offsets":[0.5,0.5]}'), eight),
        "data_offsets",
      ],
      [
        "truncated data",
        rawFile(t(ok), new Uint8Array(7)),
        "ends at byte 8 of the data section, which has only 7",
      ],
      [
        "huge end offset",
        rawFile(t('{"dtype":"U8","shape":[8],"data_offsets":[0,1e300]}'), eight),
        "data_offsets",
      ],
      [
        "byte count too small",
        rawFile(t('{"dtype":"F32","shape":[2],"data_offsets":[0,4]}'), eight),
        "needs 8",
      ],
      [
        "byte count too large",
        rawFile(t('{"dtype":"F32","shape":[1],"data_offsets":[0,8]}'), eight),
        "needs 4",
      ],
      [
        "shape larger than the file",
        rawFile(t('{"dtype":"I64","shape":[1000000,1000000,1000000],"data_offsets":[0,8]}'), eight),
        "more than the file holds",
      ],
      [
        "overlapping tensors",
        rawFile(
          '{"a":{"dtype":"U8","shape":[6],"data_offsets":[0,6]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}',
          eight,
        ),
        `tensors "a" [0, 6) and "b" [4, 8) overlap`,
      ],
      [
        "the same range twice",
        rawFile(
          '{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"I64","shape":[],"data_offsets":[0,8]}}',
          eight,
        ),
        "overlap",
      ],
      [
        "metadata value not a string",
        rawFile('{"__metadata__":{"format":1}}'),
        "__metadata__.format must be a string",
      ],
      ["metadata not an object", rawFile('{"__metadata__":["pt"]}'), "__metadata__ must be an object"],
      ["empty tensor name", rawFile('{"":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}'), "empty name"],
    ];
    for (const [what, bytes, message] of cases) {
      const path = `${dir}/bad.safetensors`;
      await Deno.writeFile(path, bytes);
      const e = await assertRejects(() => SafetensorsReader.open(path), SafetensorsError, message, what);
      assertStringIncludes(e.message, `Cannot read ${path}: `, what);
      await assertRejects(() => readSafetensors(path), SafetensorsError, message, what);
    }
    await assertRejects(
      () => SafetensorsReader.open(`${dir}/missing.safetensors`),
      SafetensorsError,
      "Cannot read",
    );
    await assertRejects(() => SafetensorsReader.open(dir), SafetensorsError, "Cannot read");
  });
});

Deno.test("an absurd header length is refused before anything is allocated (sparse 101 MB file)", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/huge_header.safetensors`;
    await Deno.writeFile(path, rawFile("", new Uint8Array(0), 100_000_001n));
    await Deno.truncate(path, 8 + 100_000_001);
    await assertRejects(
      () => SafetensorsReader.open(path),
      SafetensorsError,
      "exceeds the limit of 100000000 bytes",
    );
  });
});

Deno.test("reading one tensor reads exactly its bytes at its offset, and never the whole file", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/several.safetensors`;
    const tensors = [
      { name: "first", dtype: "U8" as const, shape: [5], data: pattern(5, 1) },
      { name: "second", dtype: "F32" as const, shape: [3, 3], data: pattern(36, 50) },
      { name: "third", dtype: "I64" as const, shape: [2], data: pattern(16, 150) },
    ];
    await writeSafetensors(path, tensors);
    using reader = await SafetensorsReader.open(path);
    assertEquals(reader.info("second").dataOffset, 5);
    assertEquals(reader.info("third").dataOffset, 41);
    // Overwrite everything but "second" through another handle: reading "second" must not notice.
    const whole = await Deno.readFile(path);
    const dataStart = whole.length - 57;
    const scribbled = whole.slice();
    scribbled.fill(0xee, dataStart);
    scribbled.set(pattern(36, 50), dataStart + 5);
    await Deno.writeFile(path, scribbled);
    assertEquals(await reader.read("second"), pattern(36, 50));
    assertEquals(await reader.read("third"), new Uint8Array(16).fill(0xee));
    // Concurrent reads on one reader do not interleave their seeks.
    const all = await Promise.all([reader.read("third"), reader.read("second"), reader.read("first")]);
    assertEquals(all[1], pattern(36, 50));
    const pool = new Uint8Array(40);
    await reader.readInto("second", pool.subarray(2, 38));
    assertEquals(pool.subarray(2, 38), pattern(36, 50));
    await assertRejects(
      () => reader.readInto("second", new Uint8Array(35)),
      SafetensorsError,
      "destination has 35",
    );
    assertThrows(() => reader.info("fourth"), SafetensorsError, `no tensor named "fourth"`);
    await assertRejects(() => reader.read("fourth"), SafetensorsError, "fourth");

    // A 256 MiB (sparse) tensor: opening and reading a small neighbour touch only the header and its bytes.
    const bigPath = `${dir}/big.safetensors`;
    const header = '{"small":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},' +
      `"big":{"dtype":"F32","shape":[${2 ** 26}],"data_offsets":[8,${8 + 2 ** 28}]}}`;
    await Deno.writeFile(bigPath, rawFile(header, pattern(8, 9)));
    await Deno.truncate(bigPath, 8 + encode(header).length + 8 + 2 ** 28);
    using big = await SafetensorsReader.open(bigPath);
    assertEquals(big.info("big").byteLength, 2 ** 28);
    assertEquals(await big.read("small"), pattern(8, 9));
  });
});

Deno.test("a closed reader refuses to read; close is idempotent; a file truncated after open is reported", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/c.safetensors`;
    await writeSafetensors(path, [{ name: "x", dtype: "U8", shape: [4], data: pattern(4, 0) }]);
    const reader = await SafetensorsReader.open(path);
    await Deno.truncate(path, reader.fileSize - 2);
    await assertRejects(() => reader.read("x"), SafetensorsError, `file ended inside tensor "x"`);
    reader.close();
    reader.close();
    await assertRejects(() => reader.read("x"), SafetensorsError, "closed");
  });
});
