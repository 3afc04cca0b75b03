// Charts on the vendored uPlot. Each chart's box carries data-points (x values with at least one
// value drawn) and data-series, so people and tests can tell an empty chart from a drawn one.
"use strict";

const COLORS = ["#1f6feb", "#d97706", "#d92d20", "#067647", "#7c3aed", "#0e7490"];

function chartWidth(box, fallback) {
  return Math.min(box.clientWidth || fallback, 1000);
}

function countPoints(xs, columns) {
  let points = 0;
  for (let i = 0; i < xs.length; i++) {
    if (columns.some((c) => c[i] !== null && c[i] !== undefined && !Number.isNaN(c[i]))) points++;
  }
  return points;
}

// A time series chart: xs in unix seconds, series = [{label, values, stroke?}].
MLH.timeChart = (id, xs, series, options) => {
  const opts = options || {};
  const box = MLH.$(id);
  const columns = series.map((s) => s.values);
  box.dataset.points = String(countPoints(xs, columns));
  box.dataset.series = String(series.length);
  // One timestamp (a window that just started) leaves uPlot guessing a span of years: pad
  // it with empty half hours on both sides.
  const data = xs.length === 1
    ? [[xs[0] - 1800, xs[0], xs[0] + 1800], ...columns.map((c) => [null, c[0], null])]
    : [xs, ...columns];
  const labels = series.map((s) => s.label).join("|");
  if (box.chart && box.dataset.labels === labels) {
    box.chart.setData(data);
    return box.chart;
  }
  if (box.chart) box.chart.destroy();
  box.replaceChildren();
  box.dataset.labels = labels;
  box.chart = new uPlot({
    width: chartWidth(box, opts.width || 480), height: opts.height || 200,
    series: [{}, ...series.map((s, i) => ({
      label: s.label, stroke: s.stroke || COLORS[i % COLORS.length], width: 2,
      points: { show: true, size: 4 }, spanGaps: false,
    }))],
    scales: opts.range ? { y: { range: opts.range } } : {},
  }, data, box);
  return box.chart;
};

// Reference vs current shares on the reference's bins, as overlaid bars.
MLH.distributionChart = (box, shape) => {
  const xs = shape.bins.map((_, i) => i);
  box.dataset.points = String(countPoints(xs, [shape.reference, shape.current]));
  box.dataset.series = "2";
  box.replaceChildren();
  const bars = (size) => uPlot.paths.bars({ size: [size, Infinity] });
  const label = (u, splits) => splits.map((i) => (Number.isInteger(i) && shape.bins[i] !== undefined
    ? shape.bins[i] : ""));
  return new uPlot({
    width: 320, height: 180,
    scales: { x: { time: false, range: [-0.5, xs.length - 0.5] }, y: { range: [0, 1] } },
    axes: [{ values: label, size: 40, rotate: 0 }, { size: 40 }],
    series: [{},
      { label: "reference", stroke: "#1f6feb", fill: "rgba(31,111,235,.25)", paths: bars(0.8),
        points: { show: false } },
      { label: "current", stroke: "#d92d20", fill: "rgba(217,45,32,.45)", paths: bars(0.45),
        points: { show: false } }],
  }, [xs, shape.reference, shape.current], box);
};
