import { assert, assertEquals } from "@std/assert";
import { InvalidArgumentError, loadCorpus, loadDocuments, stripBrownTags } from "../mod.ts";

const utf8Length = (s: string) => new TextEncoder().encode(s).length;
// A Brown tag left behind would look like "word/nn" or "The/at", followed by a space or the end.
const BROWN_TAG =
  /[A-Za-z']\/(?:at|nn|nns|np|np\$|in|vbd|vbz|vbn|vb|jj|cc|rb|cs|pps|ppss|dt|cd|to|md)(?:-tl|-hl)?(?=\s|$)/;

Deno.test("corpus: Brown loads as clean text, tags stripped, over 1 MB", async () => {
  const docs = await loadDocuments("brown");
  assertEquals(docs.length, 500);
  assertEquals([docs[0].id, docs[499].id], ["ca01", "cr09"]);
  const text = await loadCorpus("brown");
  assert(utf8Length(text) > 5_000_000, `Brown is ${utf8Length(text)} bytes`);
  assert(
    text.startsWith(
      'The Fulton County Grand Jury said Friday an investigation of Atlanta\'s recent primary election produced "no evidence" that any irregularities took place.\nThe jury further said',
    ),
  );
  const leftover = text.match(BROWN_TAG);
  assertEquals(leftover, null, `tag left in Brown text near ${leftover?.index}`);
  for (const artefact of ["``", "''", " ,", " .", ";;", "\t"]) {
    assert(!text.includes(artefact), `Brown text contains ${JSON.stringify(artefact)}`);
  }
});

Deno.test("corpus: stripBrownTags rejoins punctuation, quotes, brackets and paragraphs", () => {
  const tagged = "\n\n\tHe/pps said/vbd (/( quietly/rb )/) :/: ``/`` Go/vb home/nr ''/'' ;/. ;/.\n" +
    "It/pps was/bedz 3/cd p.m./rb ./.\n\n\n\tHome/nn-hl ?/.-hl\n";
  assertEquals(stripBrownTags(tagged), 'He said (quietly): "Go home"; It was 3 p.m.\nHome?');
  assertEquals(stripBrownTags("and/or/cc 1/2/cd"), "and/or 1/2");
  assertEquals(stripBrownTags("only/rb 4'/nns 10''/nns ''/'' tall/jj ./."), "only 4' 10\" tall.");
});

Deno.test("corpus: SOTU and Moby-Dick load with their documents in order", async () => {
  const sotu = await loadDocuments("sotu");
  assertEquals(sotu.length, 233);
  assertEquals(sotu[0].id, "1790_george_washington_n");
  assert(sotu[0].text.startsWith("Fellow-Citizens of the Senate and House of Representatives:"));
  assert(utf8Length(await loadCorpus("sotu")) > 10_000_000);

  const moby = await loadDocuments("moby-dick");
  assertEquals(moby.length, 138); // etymology, extracts, 135 chapters, epilogue
  assertEquals([moby[0].id, moby[2].id, moby[137].id], ["etymology", "chapter_1", "epilogue"]);
  assert(moby[2].text.startsWith("CHAPTER 1. Loomings.\nCall me Ishmael."));
  const text = await loadCorpus("moby-dick");
  assert(utf8Length(text) > 1_000_000 && text.includes("—"), "Moby-Dick is over 1 MB, with em dashes");
  assert(!/\n{3}|\r/.test(text));
});

Deno.test("corpus: maxChars cuts the text and reads no more than it needs", async () => {
  for (const n of [1, 50, 12_345]) assertEquals((await loadCorpus("sotu", { maxChars: n })).length, n);
  const docs = await loadDocuments("brown", { maxChars: 30_000 });
  assert(docs.length >= 2 && docs.length <= 3, `${docs.length} documents for 30,000 characters`);
  assertEquals(await loadCorpus("brown", { maxChars: 0 }), "");
  await assertRejects(() => loadCorpus("brown", { maxChars: -1 }));
  // deno-lint-ignore no-explicit-any
  await assertRejects(() => loadCorpus("wikipedia" as any));
});

async function assertRejects(f: () => Promise<unknown>) {
  try {
    await f();
  } catch (e) {
    assert(e instanceof InvalidArgumentError, `expected InvalidArgumentError, got ${e}`);
    return;
  }
  throw new Error("expected a rejection");
}
