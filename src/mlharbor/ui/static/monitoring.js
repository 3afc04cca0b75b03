// Drift (per feature, reference vs current distribution), live accuracy over time, alerts.
"use strict";

(() => {
  const { h, table, fill, empty, when } = MLH;
  const STEPS = { "1h": "5m", "24h": "1h", "7d": "1d" };

  function cell(row, value, cls) {
    row.appendChild(h("td", { className: cls }, value));
  }

  function drawFeatures(report) {
    const body = MLH.$("features").querySelector("tbody");
    body.replaceChildren();
    for (const f of report.features) {
      const row = h("tr", { dataset: { feature: f.name } });
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
    MLH.$("verdict").textContent = (d.drifted ? "Drift detected: " : "No dataset drift: ") +
      `${d.drifted_features.length} of ${d.features} features drifted ` +
      `(weighted share ${(100 * d.drifted_share).toFixed(0)}%), ${report.window.rows} rows, ` +
      `${report.model}:${report.version}.`;
    MLH.$("verdict").className = d.drifted ? "drift" : "ok";
  }

  function drawSeries(series) {
    const points = series || [];
    MLH.timeChart("drift-chart", points.map((p) => Date.parse(p.start) / 1000),
      [{ label: "drifted share", values: points.map((p) => p.drifted_share), stroke: "#d92d20" }],
      { range: [0, 1], width: 1000 });
  }

  function drawDistributions(report) {
    const box = MLH.$("distributions");
    box.replaceChildren();
    const features = [...report.features];
    if (report.prediction) features.push(report.prediction);
    for (const f of features) {
      if (!f.distribution) continue;
      const chart = h("div", { className: "chart dist-chart", dataset: { feature: f.name } });
      const title = `${f.name === "__prediction__" ? "prediction" : f.name}` +
        (f.drifted ? " (drifted)" : "");
      box.appendChild(h("figure", {}, h("figcaption", { className: f.drifted ? "drift" : "" }, title), chart));
      MLH.distributionChart(chart, f.distribution);
    }
  }

  function drawPerformance(rows) {
    const body = MLH.$("performance").querySelector("tbody");
    body.replaceChildren();
    for (const r of rows) {
      const row = h("tr", {});
      cell(row, r.start);
      cell(row, r.version);
      cell(row, r.labelled_rows);
      cell(row, Object.entries(r.metrics).filter(([, v]) => v !== null)
        .map(([k, v]) => `${k}=${v.toFixed(3)}`).join(", "));
      cell(row, (r.degraded || []).join(", "), (r.degraded || []).length ? "drift" : "");
      body.appendChild(row);
    }
    const names = [...new Set(rows.flatMap((r) => Object.keys(r.metrics)))].sort();
    MLH.timeChart("accuracy-chart", rows.map((r) => Date.parse(r.start) / 1000),
      names.map((n) => ({ label: n, values: rows.map((r) => (r.metrics[n] === undefined ? null : r.metrics[n])) })),
      { width: 1000 });
  }

  function selection() {
    return { endpoint: MLH.$("endpoint").value.trim(), window: MLH.$("window").value };
  }

  async function load(kind) {
    const { endpoint, window: win } = selection();
    if (!endpoint) {
      MLH.status("Choose an endpoint.");
      return;
    }
    const name = encodeURIComponent(endpoint);
    const query = `window=${win}&step=${STEPS[win] || "1h"}`;
    if (kind === "drift") {
      const drift = await MLH.getJson(`api/v1/monitoring/endpoints/${name}/drift?${query}&distributions=true`);
      drawFeatures(drift);
      drawSeries(drift.series);
      drawDistributions(drift);
    } else {
      const perf = await MLH.getJson(`api/v1/monitoring/endpoints/${name}/performance?${query}`);
      drawPerformance(perf.windows);
    }
  }

  // The header form: the selection lives in the hash, so a reload or a shared link keeps it.
  MLH.$("controls").addEventListener("submit", (event) => {
    event.preventDefault();
    const page = MLH.route().page === "performance" ? "performance" : "drift";
    const params = new URLSearchParams(selection());
    const target = `#/${page}?${params}`;
    if (window.location.hash === target) MLH.render();
    else window.location.hash = target;
  });

  function selectionPage(kind) {
    return {
      controls: true,
      async show(_params, query) {
        if (query.get("endpoint")) MLH.$("endpoint").value = query.get("endpoint");
        if (query.get("window")) MLH.$("window").value = query.get("window");
        if (!MLH.$("endpoint").value.trim()) {  // nothing chosen yet: the first with traffic
          const logged = await MLH.getJson("api/v1/monitoring/endpoints");
          if (logged.endpoints.length) MLH.$("endpoint").value = logged.endpoints[0];
        }
        await load(kind);
      },
    };
  }

  MLH.pages.drift = selectionPage("drift");
  MLH.pages.performance = selectionPage("performance");

  async function drawAlerts() {
    const alerts = await MLH.getJson("api/v1/monitoring/alerts?limit=200");
    fill("alerts-active", alerts.active.length ? table(
      ["alert", "severity", "endpoint", "since", "value", "threshold", "breaches"],
      alerts.active.map((a) => [a.alert, { className: "drift", value: a.severity }, a.endpoint,
        when(a.at), a.value, a.threshold, a.breaches]), { id: "alerts-active-table" })
      : empty("Nothing is firing."));
    const list = MLH.$("alerts");
    list.replaceChildren();
    for (const a of alerts.history) {
      list.appendChild(h("li", { className: a.state === "firing" ? "drift" : "ok" },
        `${when(a.at)} ${a.state.toUpperCase()} ${a.summary}`));
    }
    if (!alerts.history.length) list.appendChild(h("li", { className: "muted" }, "No alert has fired."));
  }

  MLH.pages.alerts = {
    async show() {
      await drawAlerts();
      MLH.every(10, () => drawAlerts().catch((err) => MLH.status("Error: " + err.message)));
    },
  };
})();
