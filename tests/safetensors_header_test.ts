import { assert, assertEquals, assertThrows } from "@std/assert";
import { SafetensorsError } from "../lib/base/errors.ts";
import {
  bytesPerElement,
  encodeSafetensorsHeader,
  isSafetensorsDtype,
  parseHeaderLength,
  parseSafetensorsHeader,
  type SafetensorsDtype,
} from "../lib/io/safetensors_header.ts";
import { encode } from "./_safetensors_files.ts";

Deno.test("bytesPerElement covers every dtype and refuses unknown ones", () => {
  assertEquals(
    (["F32", "F16", "BF16", "U8", "I32", "I64"] as const).map(bytesPerElement),
    [4, 2, 2, 1, 4, 8],
  );
  assertThrows(() => bytesPerElement("F64" as SafetensorsDtype), SafetensorsError, "F64");
});

Deno.test("parseSafetensorsHeader is pure and checks the header against the file size", () => {
  const json = encode('{"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}');
  const h = parseSafetensorsHeader(json, 8 + json.length + 4, "x.safetensors");
  assertEquals(h.tensors, [{ name: "w", dtype: "U8", shape: [4], byteLength: 4, dataOffset: 0 }]);
  assertThrows(
    () => parseSafetensorsHeader(json, 8 + json.length + 3, "x.safetensors"),
    SafetensorsError,
    "x.safetensors",
  );
  assertThrows(() => parseSafetensorsHeader(json, json.length), SafetensorsError, "shorter than");
  // Tensors are listed in data order even when JSON key order differs (integer-like keys come first).
  const mixed = encode(
    '{"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"7":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}',
  );
  assertEquals(parseSafetensorsHeader(mixed, 8 + mixed.length + 2).tensors.map((t) => t.name), ["b", "7"]);
});

Deno.test("isSafetensorsDtype accepts exactly the six dtypes", () => {
  for (const d of ["F32", "F16", "BF16", "U8", "I32", "I64"]) assert(isSafetensorsDtype(d), d);
  for (const d of ["F64", "f32", "", "toString", "__proto__", 4, null, undefined]) {
    assert(!isSafetensorsDtype(d));
  }
});

Deno.test("parseSafetensorsHeader refuses a key given twice (JSON.parse would keep the last)", () => {
  const twice = encode(
    '{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}',
  );
  assertThrows(() => parseSafetensorsHeader(twice, 8 + twice.length + 2, "t"), SafetensorsError, `"w" twice`);
  // The same key in two different objects is no duplicate.
  const nested = encode('{"__metadata__":{"w":"x"},"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}');
  assertEquals(parseSafetensorsHeader(nested, 8 + nested.length + 1).metadata, { w: "x" });
});

Deno.test("parseHeaderLength checks the length against the file and the 100 MB limit", () => {
  const prefix = (n: bigint) => {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, n, true);
    return b;
  };
  assertEquals(parseHeaderLength(prefix(0n), 8, "f"), 0);
  assertEquals(parseHeaderLength(prefix(40n), 48, "f"), 40);
  assertThrows(
    () => parseHeaderLength(prefix(41n), 48, "f"),
    SafetensorsError,
    "Cannot read f: header length 41",
  );
  assertThrows(() => parseHeaderLength(prefix(2n ** 64n - 1n), 48, "f"), SafetensorsError, "past the end");
  assertThrows(
    () => parseHeaderLength(prefix(100_000_001n), 200_000_000, "f"),
    SafetensorsError,
    "exceeds the limit of 100000000 bytes",
  );
  assertThrows(() => parseHeaderLength(new Uint8Array(4), 48, "f"), SafetensorsError, "8 bytes");
});

Deno.test("encodeSafetensorsHeader lays tensors out in order, pads to 8 and parses back to the same", () => {
  for (let len = 1; len <= 9; len++) {
    const entries = [
      { name: "n".repeat(len), dtype: "BF16" as const, shape: [3, 2] },
      { name: "empty", dtype: "F32" as const, shape: [0] },
      { name: "scalar", dtype: "I64" as const, shape: [] },
    ];
    const h = encodeSafetensorsHeader(entries, len % 2 ? { format: "pt" } : {}, "x");
    assertEquals(h.bytes.length % 8, 0, `name length ${len}`);
    assertEquals(h.tensors.map((t) => [t.dataOffset, t.byteLength]), [[0, 12], [12, 0], [12, 8]]);
    assertEquals(h.dataSize, 20);
    const json = new TextDecoder().decode(h.bytes.subarray(8));
    assert(json.length - json.trimEnd().length < 8, "at most 7 spaces of padding");
    const parsed = parseSafetensorsHeader(h.bytes.subarray(8), h.bytes.length + h.dataSize);
    assertEquals(parsed.tensors, h.tensors);
    assertEquals(parsed.metadata, len % 2 ? { format: "pt" } : {});
    assertEquals(parsed.dataStart, h.bytes.length);
    assertEquals(parseHeaderLength(h.bytes.subarray(0, 8), h.bytes.length + h.dataSize, "x"), json.length);
  }
  const bad: [Parameters<typeof encodeSafetensorsHeader>[0], string][] = [
    [[{ name: "a", dtype: "U8", shape: [1] }, { name: "a", dtype: "U8", shape: [1] }], `"a" appears twice`],
    [[{ name: "__metadata__", dtype: "U8", shape: [1] }], "not allowed"],
    [[{ name: "x", dtype: "F64" as SafetensorsDtype, shape: [1] }], `dtype "F64"`],
    [[{ name: "x", dtype: "U8", shape: [2, -1] }], "shape [2,-1]"],
    [[{ name: "x", dtype: "I64", shape: [2 ** 30, 2 ** 30] }], "too large"],
  ];
  for (const [entries, message] of bad) {
    const e = assertThrows(
      () => encodeSafetensorsHeader(entries, undefined, "out.st"),
      SafetensorsError,
      message,
    );
    assert(e.message.startsWith("Cannot write out.st: "), e.message);
  }
  assertThrows(
    () => encodeSafetensorsHeader([], { n: 1 as unknown as string }, "out.st"),
    SafetensorsError,
    `metadata "n" must be a string`,
  );
});
