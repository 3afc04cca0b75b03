// The dashboard: reads the monitoring JSON API and draws it. No framework, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);

function text(value) {
  return value === null || value === undefined ? "" : String(value);
}

function cell(row, value, cls) {
  const td = document.createElement("td");
  td.textContent = text(value);
  if (cls) td.className = cls;
  row.appendChild(td);
}

async function getJson(path) {
  const headers = {};
  const key = sessionStorage.getItem("mlharbor.key");
  if (key) headers["Authorization"] = "Bearer " + key;
  const answer = await fetch(path, { headers });
  if (answer.status === 401 && !key) {  // the session cookie expired or was revoked
    window.location.assign("/ui/login");
    throw new Error("Please log in again.");
  }
  const body = await answer.json();
  if (!answer.ok) throw new Error((body.error && body.error.message) || answer.statusText);
  return body;
}

function drawFeatures(report) {
  const body = $("features").querySelector("tbody");
  body.replaceChildren();
  for (const f of report.features) {
    const row = document.createElement("tr");
    row.dataset.feature = f.name;
    const state = f.drifted ? "drift" : "ok";
    cell(row, f.name, state);
    cell(row, f.drifted ? "yes" : "no", state);
    cell(row, f.score === null ? "∞" : f.score.toFixed(2), state);
    cell(row, f.tests.map((t) => `${t.test} ${t.statistic.toPrecision(3)}/${t.threshold.toPrecision(3)}`).join(", "));
    cell(row, (100 * f.missing_share).toFixed(1) + "%");
    cell(row, (100 * f.unseen_share).toFixed(1) + "%");
    body.appendChild(row);
  }
  const d = report.dataset;
  $("verdict").textContent = (d.drifted ? "Drift detected: " : "No dataset drift: ") +
    `${d.drifted_features.length} of ${d.features} features drifted ` +
    `(weighted share ${(100 * d.drifted_share).toFixed(0)}%), ${report.window.rows} rows.`;
  $("verdict").className = d.drifted ? "drift" : "ok";
}

function drawSeries(series) {
  const box = $("drift-chart");
  box.replaceChildren();
  if (!series || series.length === 0) return;
  const xs = series.map((p) => Date.parse(p.start) / 1000);
  const ys = series.map((p) => p.drifted_share);
  const opts = {
    width: Math.min(box.clientWidth || 1000, 1000), height: 200,
    series: [{}, { label: "drifted share", stroke: "#d92d20", fill: "rgba(217,45,32,.1)" }],
    scales: { y: { range: [0, 1] } },
  };
  new uPlot(opts, [xs, ys], box);
}

function drawPerformance(rows) {
  const body = $("performance").querySelector("tbody");
  body.replaceChildren();
  for (const r of rows) {
    const row = document.createElement("tr");
    cell(row, r.start);
    cell(row, r.version);
    cell(row, r.labelled_rows);
    cell(row, Object.entries(r.metrics).filter(([, v]) => v !== null)
      .map(([k, v]) => `${k}=${v.toFixed(3)}`).join(", "));
    cell(row, (r.degraded || []).join(", "), (r.degraded || []).length ? "drift" : "");
    body.appendChild(row);
  }
}

function drawAlerts(alerts) {
  const list = $("alerts");
  list.replaceChildren();
  for (const a of alerts.history.slice(0, 50)) {
    const item = document.createElement("li");
    item.textContent = `${a.at} ${a.state.toUpperCase()} ${a.summary}`;
    item.className = a.state === "firing" ? "drift" : "ok";
    list.appendChild(item);
  }
}

async function show(endpoint, windowText) {
  $("status").textContent = "Loading…";
  const name = encodeURIComponent(endpoint);
  const step = windowText === "1h" ? "5m" : windowText === "7d" ? "1d" : "1h";
  try {
    const [drift, perf, alerts] = await Promise.all([
      getJson(`/api/v1/monitoring/endpoints/${name}/drift?window=${windowText}&step=${step}`),
      getJson(`/api/v1/monitoring/endpoints/${name}/performance?window=${windowText}&step=${step}`),
      getJson("/api/v1/monitoring/alerts"),
    ]);
    drawFeatures(drift);
    drawSeries(drift.series);
    drawPerformance(perf.windows);
    drawAlerts(alerts);
    $("status").textContent = `Updated ${new Date().toISOString()}`;
  } catch (err) {
    $("status").textContent = "Error: " + err.message;
  }
}

$("controls").addEventListener("submit", (event) => {
  event.preventDefault();
  const endpoint = $("endpoint").value.trim();
  const params = new URLSearchParams({ endpoint, window: $("window").value });
  history.replaceState(null, "", "?" + params);
  show(endpoint, $("window").value);
});

const initial = new URLSearchParams(location.search);
if (initial.get("endpoint")) {
  $("endpoint").value = initial.get("endpoint");
  if (initial.get("window")) $("window").value = initial.get("window");
  show($("endpoint").value, $("window").value);
}
