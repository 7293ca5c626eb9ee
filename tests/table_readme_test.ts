import { assertEquals, assertStringIncludes } from "@std/assert";
import {
  README_BEGIN,
  README_END,
  README_RESULT,
  readmeSection,
  type ReadmeSource,
  sectionOf,
} from "../scripts/table/readme.ts";

const ROOT = new URL("..", import.meta.url);

Deno.test("README: the table section is exactly what the formatters make of the saved run", async () => {
  const readme = await Deno.readTextFile(new URL("README.md", ROOT));
  const saved = JSON.parse(await Deno.readTextFile(new URL(README_RESULT, ROOT))) as ReadmeSource;
  // When this fails: `./deno task table --readme-from tests/data/readme_table.json` after a formatter change, or
  // `./deno task table --readme` (a new run) for new figures; never edit the section by hand.
  assertEquals(sectionOf(readme), readmeSection(saved));
  assertStringIncludes(sectionOf(readme), "### Full fine-tuning vs LoRA vs QLoRA, measured");
  assertStringIncludes(sectionOf(readme), "### Quality by data type of the base");
  // deno fmt would realign the tables and rewrap the notes: the section is fenced off from it.
  assertStringIncludes(readme, `<!-- deno-fmt-ignore-start -->\n${README_BEGIN}`);
  assertStringIncludes(readme, `${README_END}\n<!-- deno-fmt-ignore-end -->`);
});
