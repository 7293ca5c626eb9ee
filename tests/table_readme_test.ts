import { assertEquals, assertStringIncludes } from "@std/assert";
import { memoryChartSvg, speedChartSvg } from "../scripts/table/chart_svg.ts";
import {
  figuresOf,
  README_BEGIN,
  README_CHART,
  README_END,
  README_RESULT,
  README_SPEED_CHART,
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

Deno.test("README: every figure its prose quotes from the table's run is that run's", async () => {
  const readme = await Deno.readTextFile(new URL("README.md", ROOT));
  const saved = JSON.parse(await Deno.readTextFile(new URL(README_RESULT, ROOT))) as ReadmeSource;
  // When this fails: `./deno task table --readme-from tests/data/readme_table.json` rewrites them (or the
  // sentence around a figure changed: README_FIGURES in scripts/table/readme.ts says where each stands).
  for (const f of figuresOf(readme, saved)) {
    assertEquals(f.shown !== null, true, `the README has the sentence of the figure "${f.name}"`);
    assertEquals(f.shown, f.expected, `the README's figure "${f.name}"`);
  }
});

Deno.test("README: it opens with the chart drawn from the table's run, committed as drawn", async () => {
  const readme = await Deno.readTextFile(new URL("README.md", ROOT));
  const saved = JSON.parse(await Deno.readTextFile(new URL(README_RESULT, ROOT))) as ReadmeSource;
  const committed = await Deno.readTextFile(new URL(README_CHART, ROOT));
  // When this fails: `./deno task table --readme-from tests/data/readme_table.json` redraws it.
  assertEquals(committed, memoryChartSvg(saved.result));
  const image = readme.indexOf(`](${README_CHART})`);
  assertEquals(
    image > 0 && image < readme.indexOf("## Quick start"),
    true,
    "the chart is shown before the quick start",
  );
});

Deno.test("README: the speed chart is drawn from the table's run, committed as drawn", async () => {
  const readme = await Deno.readTextFile(new URL("README.md", ROOT));
  const saved = JSON.parse(await Deno.readTextFile(new URL(README_RESULT, ROOT))) as ReadmeSource;
  const committed = await Deno.readTextFile(new URL(README_SPEED_CHART, ROOT));
  assertEquals(committed, speedChartSvg(saved.result));
  assertStringIncludes(readme, `](${README_SPEED_CHART})`);
});
