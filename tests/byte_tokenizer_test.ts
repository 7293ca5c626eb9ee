import { assert, assertEquals, assertThrows } from "@std/assert";
import { ByteTokenizer, InvalidArgumentError } from "../mod.ts";

const utf8Length = (s: string) => new TextEncoder().encode(s).length;

Deno.test("tokenizer: ByteTokenizer round-trips ASCII and non-ASCII text through UTF-8 bytes", () => {
  const tok = new ByteTokenizer();
  assertEquals(tok.vocabSize, 259);
  for (
    const s of ["", "Call me Ishmael.", "naïve café — Ελληνικά, 日本語, emoji 🐋\n\ttab", "\u0000\u00ff"]
  ) {
    const ids = tok.encode(s);
    assertEquals(ids.length, utf8Length(s));
    assert(ids.every((id) => id >= 0 && id < 256));
    assertEquals(tok.decode(ids), s);
  }
  assertEquals([...tok.encode("é", { bos: true, eos: true })], [257, 0xc3, 0xa9, 258]);
  assertEquals(tok.decode([257, 104, 105, 258]), "hi");
  assertEquals(tok.decode([257, 104, 256, 105, 258], { keepSpecial: true }), "<|bos|>h<|pad|>i<|eos|>");
  // A special in the middle of a character drops out; a cut character becomes U+FFFD.
  assertEquals(tok.decode([0xc3, 256, 0xa9]), "é");
  assertEquals(tok.decode([0x61, 0xc3]), "a\ufffd");
  assertThrows(() => tok.decode([259]), InvalidArgumentError, "outside the vocabulary [0, 259)");
  assertThrows(() => tok.decode([-1]), InvalidArgumentError);
});

Deno.test("tokenizer: ByteTokenizer pads its vocabulary and saves to JSON", () => {
  assertEquals(new ByteTokenizer({ padVocabTo: 8 }).vocabSize, 264);
  const tok = new ByteTokenizer({ padVocabTo: 64 });
  assertEquals(tok.vocabSize, 320);
  assertEquals(tok.decode([104, 300, 105]), "hi");
  assertEquals(tok.decode([300], { keepSpecial: true }), "<|unused_300|>");
  const json = JSON.stringify(tok);
  assertEquals(JSON.parse(json), { type: "byte", vocabSize: 320, pad: 256, bos: 257, eos: 258 });
  const back = ByteTokenizer.fromJSON(json);
  assertEquals(back.toJSON(), tok.toJSON());
  assertEquals(ByteTokenizer.fromJSON(tok.toJSON()).vocabSize, 320);
  assertThrows(
    () => ByteTokenizer.fromJSON('{"type":"bpe"}'),
    InvalidArgumentError,
    'expected {type: "byte"',
  );
  assertThrows(
    () => ByteTokenizer.fromJSON({ type: "byte", vocabSize: 100, pad: 256, bos: 257, eos: 258 }),
    InvalidArgumentError,
  );
  assertThrows(() => new ByteTokenizer({ padVocabTo: 0 }), InvalidArgumentError);
});
