// Drift (per feature, reference vs current distribution), live accuracy over time beside the
// accuracy estimated without labels (CBPE), alerts.
"use strict";

(() => {
  const { h, table, fill, empty, when } = MLH;
  const STEPS = { "1h": "5m", "24h": "1h", "7d": "1d" };
  const SECONDS = { "5m": 300, "1h": 3600, "1d": 86400 };
  // A window's point is drawn at its end (the window still running: now), so the newest value
  // sits at the right edge, not a whole step back.
  const windowEnd = (start, stepSeconds) =>
    Math.min(Date.parse(start) / 1000 + stepSeconds, Date.now() / 1000);

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

  function drawSeries(series, win) {
    const points = series || [];
    const step = SECONDS[STEPS[win] || "1h"];
    MLH.timeChart("drift-chart", points.map((p) => windowEnd(p.start, step)),
      [{ label: "drifted share", values: points.map((p) => p.drifted_share), stroke: "#d92d20" }],
      { range: [0, 1], unit: "%", xRange: span(win) });
  }

  // The span a page shows: the window asked for, ending now.
  function span(win) {
    const now = Date.now() / 1000;
    const seconds = { "1h": 3600, "24h": 86400, "7d": 7 * 86400 }[win] || 86400;
    return [now - seconds, now];
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
      box.appendChild(h("figure", { className: "dist" },
        h("figcaption", { className: f.drifted ? "drift" : "" }, title), chart));
      MLH.distributionChart(chart, f.distribution);
    }
  }

  // The CBPE estimate of each (window, version) paired with the live row of the same version
  // whose window starts within half a step (the two answers were computed moments apart);
  // a window with predictions but no labels yet gets a row of its own: that is what the
  // estimate is for.
  function pairEstimates(rows, estimated, stepSeconds) {
    const out = rows.map((r) => ({ ...r, estimated: null }));
    for (const e of estimated) {
      const near = out.find((r) => r.version === e.version && !r.estimated &&
        Math.abs(Date.parse(r.start) - Date.parse(e.start)) < stepSeconds * 500);
      if (near) near.estimated = e;
      else {
        out.push({ start: e.start, end: e.end, version: e.version, labelled_rows: 0, metrics: {},
          degraded: [], estimated: e });
      }
    }
    return out.sort((a, b) => Date.parse(a.start) - Date.parse(b.start) || (a.version || 0) - (b.version || 0));
  }

  function estimateCell(e) {
    if (!e) return { value: "no predictions logged", className: "muted" };
    if (!e.estimate) return { value: `none: ${e.unavailable}`, className: "muted clip", title: e.unavailable };
    const est = e.estimate;
    const realised = e.realised === null || e.realised === undefined ? ""
      : `; realised ${e.realised.toFixed(3)}` + (est.lower <= e.realised && e.realised <= est.upper ? " (inside)" : " (outside)");
    return { value: `${est.value.toFixed(3)} [${est.lower.toFixed(3)}, ${est.upper.toFixed(3)}] over ${est.n} rows${realised}`,
      className: "nowrap estimate", title: `fitted on ${e.reference_rows} labelled rows logged before the window; ` +
        `calibrator ${est.calibrator}, calibration error ${est.calibration_error.toFixed(4)}, ` +
        `standard error ${est.standard_error.toFixed(4)}, ${Math.round(100 * est.confidence)}% interval` };
  }

  function drawPerformance(live, estimated, win) {
    const stepSeconds = SECONDS[STEPS[win] || "1h"];
    const rows = pairEstimates(live, estimated ? estimated.windows : [], stepSeconds);
    const body = MLH.$("performance").querySelector("tbody");
    body.replaceChildren();
    for (const r of rows) {
      const row = h("tr", { dataset: { version: MLH.text(r.version) } });
      cell(row, `${when(r.start)} to ${when(r.end)}`);
      cell(row, r.version);
      cell(row, r.labelled_rows);
      cell(row, Object.entries(r.metrics).filter(([, v]) => v !== null)
        .map(([k, v]) => `${k}=${v.toFixed(3)}`).join(", "));
      const e = estimateCell(r.estimated);
      row.appendChild(h("td", { className: e.className, title: e.title }, e.value));
      cell(row, (r.degraded || []).join(", "), (r.degraded || []).length ? "drift" : "");
      body.appendChild(row);
    }
    MLH.$("estimate-note").textContent = estimated
      ? `Estimated accuracy: ${estimated.validation} ${estimated.unavailable_when}`
      : "";
    // One line per version for the headline metrics (the table has them all): versions
    // sharing a window are compared, not joined into one zigzag; and the estimate per version.
    const all = [...new Set(rows.flatMap((r) => Object.keys(r.metrics)))].sort();
    const headline = ["accuracy", "f1", "rmse", "mae", "r2"].filter((n) => all.includes(n)).slice(0, 2);
    const names = headline.length ? headline : all.slice(0, 2);
    const versions = [...new Set(rows.map((r) => r.version))].sort((a, b) => (a || 0) - (b || 0));
    const now = Date.now() / 1000;
    const at = (r) => Math.min(Date.parse(r.end) / 1000, now);
    const xs = [...new Set(rows.map(at))].sort((a, b) => a - b);
    const label = (v) => `v${v === null ? "?" : v}`;
    const series = [];
    for (const n of names) {
      for (const v of versions) {
        series.push({ label: `${n} ${label(v)}`, values: xs.map((x) => {
          const r = rows.find((row) => row.version === v && at(row) === x);
          return r && r.metrics[n] !== undefined ? r.metrics[n] : null;
        }) });
      }
    }
    const estimatedVersions = versions.filter((v) => rows.some((r) => r.version === v && r.estimated && r.estimated.estimate));
    const bands = [];
    for (const v of estimatedVersions) {
      // Dashed, in the colour of the version's live accuracy line when that is drawn first,
      // with its interval shaded between two thin bounds.
      const stroke = names[0] === "accuracy" ? COLORS[versions.indexOf(v) % COLORS.length] : COLORS[4];
      const pick = (key) => xs.map((x) => {
        const r = rows.find((row) => row.version === v && at(row) === x);
        return r && r.estimated && r.estimated.estimate ? r.estimated.estimate[key] : null;
      });
      series.push({ label: `estimated accuracy ${label(v)}`, dash: [6, 4], stroke, values: pick("value") });
      series.push({ label: `interval high ${label(v)}`, width: 1, stroke: stroke + "66", values: pick("upper") });
      series.push({ label: `interval low ${label(v)}`, width: 1, stroke: stroke + "66", values: pick("lower") });
      bands.push([series.length - 2, series.length - 1, stroke + "22"]);
    }
    MLH.timeChart("accuracy-chart", xs, series, { xRange: span(win), bands });
  }

  function selection() {
    return { endpoint: (MLH.$("endpoint").value || "").trim(), window: MLH.$("window").value };
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
      drawSeries(drift.series, win);
      drawDistributions(drift);
    } else {
      // The estimate is an addition: if it cannot be read, the live metrics still show.
      let problem = "";
      const [perf, estimated] = await Promise.all([
        MLH.getJson(`api/v1/monitoring/endpoints/${name}/performance?${query}`),
        MLH.getJson(`api/v1/monitoring/endpoints/${name}/estimated?${query}`).catch((err) => {
          problem = err.message;
          return null;
        })]);
      drawPerformance(perf.windows, estimated, win);
      if (!estimated) MLH.$("estimate-note").textContent = `Estimated accuracy could not be read: ${problem}`;
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

  // The endpoints there are (stored or logged), each with its recent traffic and whether its
  // served version has a reference profile; the first with both is the default choice.
  async function fillEndpoints(wanted) {
    const body = await MLH.getJson("api/v1/monitoring/endpoints?details=true");
    const select = MLH.$("endpoint");
    const known = body.details.map((d) => d.name);
    const options = body.details.map((d) => h("option", { value: d.name },
      `${d.name} — ${d.requests} requests in 24 h` + (d.requests && !d.has_reference ? ", no reference" : "")));
    if (wanted && !known.includes(wanted)) options.push(h("option", { value: wanted }, `${wanted} (not found)`));
    select.replaceChildren(...options);
    const best = body.details.find((d) => d.requests && d.has_reference) ||
      body.details.find((d) => d.requests) || body.details[0];
    select.value = wanted || (best ? best.name : "");
    const chosen = body.details.find((d) => d.name === select.value);
    MLH.$("endpoint-note").textContent = !body.details.length ? "No endpoint is stored or has traffic yet."
      : chosen && chosen.model ? `serves ${chosen.model}:${chosen.version}` : "";
  }

  function selectionPage(kind) {
    return {
      controls: true,
      async show(_params, query) {
        if (query.get("window")) MLH.$("window").value = query.get("window");
        await fillEndpoints(query.get("endpoint") || MLH.$("endpoint").value);
        await load(kind);
      },
    };
  }

  MLH.pages.drift = selectionPage("drift");
  MLH.pages.performance = selectionPage("performance");

  async function drawAlerts() {
    const [alerts, rules] = await Promise.all([MLH.getJson("api/v1/monitoring/alerts?limit=200"),
      MLH.getJson("api/v1/monitoring/alerts/rules")]);
    fill("alerts-active", alerts.active.length ? table(
      ["alert", "severity", "endpoint", "since", "value", "condition", "breaches"],
      alerts.active.map((a) => {
        const rule = rules.rules.find((r) => r.name === a.alert);
        return [a.alert, { className: "drift", value: a.severity }, a.endpoint, when(a.at),
          MLH.number(a.value, 4), rule ? `${rule.direction} ${rule.threshold_text}` : a.threshold,
          a.breaches];
      }), { id: "alerts-active-table" })
      : empty(rules.rules.length ? `Nothing is firing: ${rules.rules.length} rules are watching.`
        : "Nothing is firing, and no rule is watching."));
    MLH.$("alert-rules-note").textContent = rules.note;
    fill("alert-rules", rules.rules.length ? table(
      ["rule", "state", "kind", "endpoint", "condition", "last value", "recent breaches", "source"],
      rules.rules.map((r) => ({
        attrs: { dataset: { rule: r.name, state: r.state } },
        cells: [MLH.clip(r.name), h("span", { className: "badge " + r.state }, r.state),
          r.kind, r.endpoint === "*" ? "every endpoint" : r.endpoint,
          `${r.direction} ${r.threshold_text} over ${r.window} (${r.m} of ${r.n})`,
          r.last_value === null ? "no data" : MLH.number(r.last_value, 4),
          `${r.breaches} of ${r.evaluations}`, r.source],
      })), { id: "alert-rules-table" }) : empty("No rule is active."));
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
