// Charts on the vendored uPlot. Each chart's box carries data-points (x values with at least one
// value drawn) and data-series, so people and tests can tell an empty chart from a drawn one;
// time charts also carry data-x-min / data-x-max, the time range they show (unix seconds).
"use strict";

const COLORS = ["#1f6feb", "#d97706", "#d92d20", "#067647", "#7c3aed", "#0e7490"];

// Width for a y axis: its widest tick label (in the axis font) plus the ticks and a gap.
function yAxisSize(u, values, axisIdx) {
  if (!values || !values.length) return 56;
  const ctx = yAxisSize.ctx || (yAxisSize.ctx = document.createElement("canvas").getContext("2d"));
  ctx.font = u.axes[axisIdx].font ? u.axes[axisIdx].font[0] : "12px sans-serif";
  const widest = Math.max(...values.map((v) => ctx.measureText(String(v)).width));
  return Math.max(56, Math.ceil(widest / (window.devicePixelRatio || 1)) + 18);
}

// The chart takes the width of its box (its grid cell), so two charts side by side fit.
function chartWidth(box, fallback) {
  return Math.max(240, Math.floor(box.clientWidth || fallback));
}

function countPoints(xs, columns) {
  let points = 0;
  for (let i = 0; i < xs.length; i++) {
    if (columns.some((c) => c[i] !== null && c[i] !== undefined && !Number.isNaN(c[i]))) points++;
  }
  return points;
}

// Short numbers for axis ticks: 1.2k, 0.25, 3.
MLH.tick = (v, unit) => {
  if (v === null || v === undefined) return "";
  const a = Math.abs(v);
  const text = a >= 1e6 ? (v / 1e6).toFixed(1) + "M" : a >= 1e4 ? (v / 1e3).toFixed(0) + "k"
    : a >= 1e3 ? (v / 1e3).toFixed(1) + "k" : a >= 10 || a === 0 ? String(Math.round(v))
      : a >= 1 ? String(parseFloat(v.toFixed(1))) : String(parseFloat(v.toPrecision(2)));
  return text + (unit || "");
};

// A time series chart: xs in unix seconds, series = [{label, values, stroke?, dash?, width?}].
// options: {range: [ymin, ymax], xRange: [from, to] (unix s; charts of one page share it),
//           unit: suffix of the y ticks ("%" turns shares into percent), height,
//           bands: [[upper index, lower index, fill]] shaded between two series}.
MLH.timeChart = (id, xs, series, options) => {
  const opts = options || {};
  const box = MLH.$(id);
  const columns = series.map((s) => s.values);
  box.dataset.points = String(countPoints(xs, columns));
  box.dataset.series = String(series.length);
  // One timestamp and no given range leaves uPlot guessing a span of years: pad it with
  // empty half hours on both sides.
  const data = xs.length === 1 && !opts.xRange
    ? [[xs[0] - 1800, xs[0], xs[0] + 1800], ...columns.map((c) => [null, c[0], null])]
    : [xs, ...columns];
  const xRange = opts.xRange || (xs.length ? [Math.min(...data[0]), Math.max(...data[0])] : null);
  if (xRange) {
    box.dataset.xMin = String(Math.round(xRange[0]));
    box.dataset.xMax = String(Math.round(xRange[1]));
  }
  const labels = series.map((s) => s.label).join("|") + "|" + (opts.unit || "");
  const percent = opts.unit === "%";
  const yValues = (u, splits) => splits.map((v) => (percent ? MLH.tick(100 * v, "%") : MLH.tick(v, opts.unit)));
  const config = {
    width: chartWidth(box, 560), height: opts.height || 220,
    series: [{}, ...series.map((s, i) => ({
      label: s.label, stroke: s.stroke || COLORS[i % COLORS.length], width: s.width || 2, dash: s.dash,
      points: { show: true, size: 5 }, spanGaps: false,
      value: (u, v) => (v === null || v === undefined ? "—"
        : percent ? (100 * v).toFixed(1) + "%" : Number(v).toPrecision(4) + (opts.unit || "")),
    }))],
    // The y axis is as wide as its longest tick label (units make "0.75 ms" wider than 56 px).
    axes: [{ size: 50 }, { size: yAxisSize, values: yValues }],
    // Shaded intervals: [[upper series index, lower series index, fill]] (indices into `series`).
    bands: (opts.bands || []).map(([hi, lo, fill]) => ({ series: [hi + 1, lo + 1], fill })),
    scales: {
      x: { time: true, ...(xRange ? { range: () => xRange } : {}) },
      ...(opts.range ? { y: { range: opts.range } } : {}),
    },
  };
  if (box.chart && box.dataset.labels === labels && box.chart.width === config.width) {
    box.chart.setData(data);
    return box.chart;
  }
  if (box.chart) box.chart.destroy();
  box.replaceChildren();
  box.dataset.labels = labels;
  box.chart = new uPlot(config, data, box);
  return box.chart;
};

// Reference vs current shares on the reference's bins, as overlaid bars. Bin labels are
// shortened and thinned so they never overlap; the legend shows the whole label of the bin
// under the cursor.
MLH.distributionChart = (box, shape) => {
  const xs = shape.bins.map((_, i) => i);
  box.dataset.points = String(countPoints(xs, [shape.reference, shape.current]));
  box.dataset.series = "2";
  box.replaceChildren();
  const width = chartWidth(box, 520);
  const short = (text) => (text.length > 14 ? text.slice(0, 13) + "…" : text);
  const numeric = Array.isArray(shape.edges) && shape.edges.length === shape.bins.length + 1;
  // Numeric bins are labelled by their middle (an open end: its finite edge); the whole
  // "a to b" is in the legend.
  const middle = (i) => {
    const [lo, hi] = [shape.edges[i], shape.edges[i + 1]];
    return Number.isFinite(lo) && Number.isFinite(hi) ? (lo + hi) / 2 : Number.isFinite(lo) ? lo : hi;
  };
  const tickLabel = (i) => (numeric ? MLH.tick(middle(i)) : short(String(shape.bins[i])));
  const longest = Math.max(1, ...xs.map((i) => tickLabel(i).length));
  const slots = Math.max(1, Math.floor((width - 70) / (longest * 7 + 12)));
  const stride = Math.max(1, Math.ceil(xs.length / slots));
  const label = (u, splits) => splits.map((i) => (Number.isInteger(i) && shape.bins[i] !== undefined
    && i % stride === 0 ? tickLabel(i) : ""));
  box.dataset.ticks = JSON.stringify(xs.map((i) => (i % stride === 0 ? tickLabel(i) : "")));
  const bars = (size) => uPlot.paths.bars({ size: [size, Infinity] });
  const top = Math.min(1, Math.max(0.05, ...shape.reference, ...shape.current) * 1.15);
  const share = (u, v) => (v === null || v === undefined ? "—" : (100 * v).toFixed(1) + "%");
  return new uPlot({
    width, height: 200,
    scales: { x: { time: false, range: [-0.5, xs.length - 0.5] }, y: { range: [0, top] } },
    axes: [
      { values: label, size: 36, splits: () => xs, gap: 4, grid: { show: false } },
      { size: 52, values: (u, splits) => splits.map((v) => MLH.tick(100 * v, "%")) }],
    series: [{ label: "bin", value: (u, i) => (shape.bins[i] === undefined ? "—" : shape.bins[i]) },
      { label: "reference", stroke: "#1f6feb", fill: "rgba(31,111,235,.25)", paths: bars(0.8),
        points: { show: false }, value: share },
      { label: "current", stroke: "#d92d20", fill: "rgba(217,45,32,.45)", paths: bars(0.45),
        points: { show: false }, value: share }],
  }, [xs, shape.reference, shape.current], box);
};
