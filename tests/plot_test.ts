import { assert, assertEquals, assertStringIncludes, assertThrows } from "@std/assert";
import {
  barChart,
  Figure,
  histogram,
  histogramChart,
  InvalidArgumentError,
  JUPYTER_DISPLAY,
  lineChart,
  plot,
  PLOTLY_MIME,
  plotlyJs,
  resetPlotlyInclusion,
} from "../mod.ts";

Deno.test("plot: the MIME bundle carries plotly JSON, HTML and plain text", async () => {
  const fig = plot([{ type: "bar", name: "NF4", x: ["a", "b"], y: [1, 2] }], { title: "t" });
  const bundle = await fig[JUPYTER_DISPLAY]();
  assertEquals(Object.keys(bundle).sort(), [PLOTLY_MIME, "text/html", "text/plain"].sort());
  assertEquals(bundle[PLOTLY_MIME], { data: fig.data, layout: fig.layout, config: fig.config });
  assertEquals(bundle["text/plain"], 'Figure "t": bar "NF4" (2 points)');
  const html = bundle["text/html"] as string;
  assertStringIncludes(html, 'class="qlora-plot"');
  assertStringIncludes(html, "Plotly.newPlot");
});

Deno.test("plot: plotly.js is inlined with the first figure of a session only, offline from npm", async () => {
  const js = await plotlyJs();
  assert(js.length > 1_000_000, `plotly.js is ${js.length} characters`);
  assert(!js.includes("</script"), "plotly.js must be safe to inline in a <script> element");
  resetPlotlyInclusion();
  const fig = lineChart([1, 2], { y: [1, 2] });
  const first = (await fig[JUPYTER_DISPLAY]())["text/html"] as string;
  const second = (await fig[JUPYTER_DISPLAY]())["text/html"] as string;
  assertStringIncludes(first, js);
  assert(!second.includes("window.Plotly = Plotly"), "the second figure must not inline plotly.js again");
  assert(second.length < 10_000);
  resetPlotlyInclusion();
  assertStringIncludes((await fig[JUPYTER_DISPLAY]())["text/html"] as string, js);
});

Deno.test("plot: figure JSON cannot break out of its <script> element", async () => {
  const html = await plot([{ type: "bar", name: "</script><b>x</b>", x: [1], y: [1] }]).toHTML();
  assertEquals(html.split("</script>").length - 1, 1);
  assertStringIncludes(html, "\\u003c/script>");
});

Deno.test("plot: bar and line charts have one trace per series and check lengths", () => {
  const bars = barChart(["7B", "65B"], { a: [1, 2], b: new Float64Array([3, 4]) }, {
    title: "x",
    stacked: true,
    logY: true,
  });
  assertEquals(bars.data.map((t) => [t.type, t.name, t.y]), [["bar", "a", [1, 2]], ["bar", "b", [3, 4]]]);
  assertEquals(bars.layout.barmode, "stack");
  assertEquals((bars.layout.yaxis as { type: string }).type, "log");
  assertThrows(() => barChart(["a"], { a: [1, 2] }), InvalidArgumentError, "2 values for 1 x values");
  assertThrows(() => lineChart([1], {}), InvalidArgumentError, "no series");
  assertThrows(() => new Figure({} as never), InvalidArgumentError);
  const many = lineChart(Array.from({ length: 100 }, (_, i) => i), { y: new Array(100).fill(0) });
  assertEquals(many.data[0].mode, "lines");
});

Deno.test("plot: histogram densities integrate to one over the bins", () => {
  const samples = Float32Array.from({ length: 10_000 }, (_, i) => Math.sin(i));
  const h = histogram(samples, { bins: 50 });
  assertEquals(h.counts.reduce((a, b) => a + b, 0), samples.length);
  const integral = h.density.reduce((a, d) => a + d * h.width, 0);
  assert(Math.abs(integral - 1) < 1e-9, `integral ${integral}`);
  const ranged = histogram(new Float32Array([-5, 0, 0.5, 5]), { bins: 2, min: -1, max: 1 });
  assertEquals(ranged.counts, [0, 2]);
  assertThrows(() => histogram([1, 1]), InvalidArgumentError);
  const fig = histogramChart({ a: [0, 1], b: [2, 3] }, { bins: 3 });
  assertEquals(fig.data.length, 2);
  assertEquals(fig.data[0].x, fig.data[1].x);
});
