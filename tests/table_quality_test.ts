import { assertEquals, assertStringIncludes } from "@std/assert";
import { qualityTable } from "../scripts/table/quality_table.ts";
import { fakeQuality } from "./_quality_result.ts";

Deno.test("quality table: a column per data type, spreads, differences and the verdict in the notes", () => {
  const base = { bf16: [7.0, 7.1, 7.2], "nf4-dq": [7.05, 7.15, 7.25], fp4: [7.3, 7.4, 7.5] };
  const clear = fakeQuality({ ...base, nf4: [7.05, 7.15, 7.25], int4: [8.0, 8.1, 8.2] });
  const t = qualityTable(clear);
  assertEquals(t.headers.length, 6);
  for (const row of t.rows) assertEquals(row.length, 6, row[0]);
  assertEquals(t.rows[2][1], "7.100 +- 0.100");
  assertStringIncludes(t.rows[4][2], "larger than the spread"); // NF4 vs Int4
  assertEquals(t.rows[3][1], "-"); // bf16 against itself
  assertStringIncludes(
    t.notes.join("\n"),
    'NF4 preserves much higher accuracy than Int4" (seed document): holds here',
  );
});
