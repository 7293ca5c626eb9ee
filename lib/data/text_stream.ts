/**
 * Text as tokens arrive: {@linkcode TextStream} turns a sequence's new tokens into the new text to print,
 * one piece per token, so that generation streams words rather than ids. A token that ends in the middle of
 * a UTF-8 character (byte-fallback tokens) prints nothing until the character is whole.
 *
 * @module
 */

import type { Tokenizer } from "./tokenizer.ts";

/**
 * The text a sequence gains with each token, decoded with the prompt before it (a SentencePiece tokenizer
 * writes a word's leading space only after another token).
 *
 * @example
 * ```ts
 * import { ByteTokenizer, TextStream } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const tok = new ByteTokenizer();
 * const stream = new TextStream(tok, tok.encode("Caf"));
 * const [c3, a9] = new TextEncoder().encode("é"); // two byte tokens: the first alone prints nothing
 * assertEquals([stream.push(c3), stream.push(a9), stream.push(33)], ["", "é", "!"]);
 * assertEquals(stream.text, "é!");
 * ```
 */
export class TextStream {
  readonly #tokenizer: Tokenizer;
  readonly #ids: number[];
  readonly #promptText: string;
  #printed = 0;

  /** A stream for the tokens that follow `prompt`. */
  constructor(tokenizer: Tokenizer, prompt: ArrayLike<number> = []) {
    this.#tokenizer = tokenizer;
    this.#ids = Array.from(prompt);
    this.#promptText = tokenizer.decode(this.#ids);
  }

  /** The text of every token pushed so far that is complete. */
  get text(): string {
    return this.#decoded().slice(0, this.#printed);
  }

  /** Adds a token; returns the text it completes ("" while a character is unfinished). */
  push(token: number): string {
    this.#ids.push(token);
    let text = this.#decoded();
    while (text.endsWith("\uFFFD")) text = text.slice(0, -1); // an unfinished UTF-8 sequence
    if (text.length <= this.#printed) return "";
    const piece = text.slice(this.#printed);
    this.#printed = text.length;
    return piece;
  }

  #decoded(): string {
    const all = this.#tokenizer.decode(this.#ids);
    return all.startsWith(this.#promptText) ? all.slice(this.#promptText.length) : all;
  }
}
