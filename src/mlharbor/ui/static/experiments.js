// Experiments: the list -> an experiment's runs (search with MLflow's filter grammar, metric
// columns sorted by the server, a parameter-vs-metric scatter) -> a run (metric history over
// steps, params, tags, child runs) or two runs side by side. Reads /api/v1/experiments and
// /api/v1/runs (mlharbor.api.routes.runs).
"use strict";

(() => {
  const { h, link, table, fill, empty, number, clip } = MLH;
  const MAX_CHARTS = 8;
  const MAX_METRIC_COLUMNS = 8;
  const MAX_PARAM_COLUMNS = 4;
  const enc = (p) => encodeURIComponent(String(p));
  const hashOf = (...parts) => "#/" + parts.map(enc).join("/");
  const when = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) : "");
  const took = (s) => (s === null || s === undefined ? "" : s < 600 ? `${s.toFixed(1)} s` : `${(s / 60).toFixed(1)} min`);
  const statusCell = (s) => ({ value: s, className: s === "FINISHED" ? "ok" : s === "FAILED" || s === "KILLED" ? "drift" : "" });
  const short = (id) => (id ? id.slice(0, 12) : "");

  function hideAll() {
    for (const id of ["experiment-detail", "run-detail", "diff-detail"]) MLH.$(id).hidden = true;
    MLH.$("runs-error").hidden = true;
  }

  async function showList() {
    const body = await MLH.getJson("api/v1/experiments");
    fill("experiments-list", body.items.length ? table(["experiment", "id", "runs", "updated"],
      body.items.map((e) => ({
        attrs: { dataset: { experiment: e.name } },
        cells: [link(e.name, "experiments", e.name), e.experiment_id, e.runs,
          { value: when(e.last_update_time), className: "nowrap" }],
      })), { id: "experiments-table" })
      : empty("No experiments yet: run `mlharbor train`, or point an MLflow client here."));
  }

  // A header that sorts by its column: descending first, ascending on a second click.
  function sortHeader(experiment, query, entity, key, label) {
    const current = (query.get("order") || "").trim();
    // A key of letters, digits and . _ - / : needs no quotes in the grammar.
    const name = /^\w[\w.\-/:]*$/.test(key) ? `${entity}.${key}` : `${entity}.\`${key}\``;
    const desc = `${name} DESC`;
    const next = current === desc ? `${name} ASC` : desc;
    const q = new URLSearchParams(query);
    q.set("order", next);
    const arrow = current === desc ? " ▼" : current === `${name} ASC` ? " ▲" : "";
    return h("a", { href: hashOf("experiments", experiment) + "?" + q.toString(),
      className: "sort", dataset: { sort: `${entity}.${key}` } }, label + arrow);
  }

  function metricValue(value) {
    return value === null || value === undefined ? "" : Math.abs(value) >= 1e4 || (value !== 0 && Math.abs(value) < 1e-3)
      ? Number(value).toPrecision(4) : number(value, 4);
  }

  async function showExperiment(experiment, query) {
    MLH.$("experiments-list").replaceChildren(link("← all experiments", "experiments"));
    MLH.$("experiment-title").textContent = `Experiment ${experiment}`;
    const filter = query.get("filter") || "";
    const order = query.get("order") || "";
    MLH.$("runs-filter").value = filter;
    MLH.$("runs-order").value = order;
    MLH.$("experiment-detail").hidden = false;
    const q = new URLSearchParams({ experiment, max_results: "500" });
    if (filter) q.set("filter", filter);
    if (order) q.set("order_by", order);
    let body;
    try {
      body = await MLH.getJson("api/v1/runs?" + q.toString());
    } catch (err) {
      if (err.status !== 400 && err.status !== 422) throw err;
      // A filter the parser refused: say what and where beside the form; no table.
      MLH.$("runs-error").textContent = err.message;
      MLH.$("runs-error").hidden = false;
      fill("runs-list", empty("Fix the filter to see runs."));
      fill("scatter-chart");
      return;
    }
    const metrics = body.metric_columns.slice(0, MAX_METRIC_COLUMNS);
    const params = body.param_columns.slice(0, MAX_PARAM_COLUMNS);
    const headers = ["", "run", "name", "status", "parent", "started", "took",
      ...metrics.map((k) => sortHeader(experiment, query, "metrics", k, k)),
      ...params.map((k) => sortHeader(experiment, query, "params", k, `param ${k}`))];
    const rows = body.runs.map((r) => ({
      attrs: { dataset: { run: r.run_id } },
      cells: [h("input", { type: "checkbox", className: "pick", dataset: { run: r.run_id },
        "aria-label": `select run ${r.name}` }),
      link(short(r.run_id), "experiments", experiment, "runs", r.run_id), clip(r.name),
      statusCell(r.status), r.parent_run_id ? link(short(r.parent_run_id), "experiments", experiment, "runs", r.parent_run_id) : "",
      { value: when(r.start_time).slice(5), className: "nowrap" }, took(r.duration_s),
      ...metrics.map((k) => ({ value: metricValue(r.metrics[k]), className: "num" })),
      ...params.map((k) => clip(r.params[k]))],
    }));
    fill("runs-list", rows.length ? table(headers, rows, { id: "runs-table" })
      : empty(filter ? "No run matches this filter." : "No runs in this experiment yet."));
    MLH.$("runs-note").textContent = `${body.runs.length} run(s)` + (body.next_page_token ? " (first 500)" : "");
    wirePicks(experiment);
    scatterControls(body.runs, body.param_columns, body.metric_columns, order);
  }

  function wirePicks(experiment) {
    const button = MLH.$("runs-compare");
    const picked = () => [...document.querySelectorAll("#runs-table input.pick:checked")].map((c) => c.dataset.run);
    const update = () => { button.disabled = picked().length !== 2; };
    for (const box of document.querySelectorAll("#runs-table input.pick")) box.addEventListener("change", update);
    button.onclick = () => {
      const [a, b] = picked();
      if (a && b) window.location.hash = hashOf("experiments", experiment, "diff", a, b).slice(1);
    };
    update();
  }

  // The scatter's choices: every param and metric of the page; by default the param that
  // varies most across the runs and the metric the table is sorted by (else the first).
  function scatterControls(runs, params, metrics, order) {
    const paramBox = MLH.$("scatter-param");
    const metricBox = MLH.$("scatter-metric");
    const distinct = (k) => new Set(runs.map((r) => r.params[k]).filter((v) => v !== undefined)).size;
    const byVariety = params.slice().sort((a, b) => distinct(b) - distinct(a));
    const sorted = (order.match(/^metrics?\.`?([^`\s]+)`?/) || [])[1];
    const keep = (box, options, preferred) => {
      const previous = box.value;
      box.replaceChildren(...options.map((o) => h("option", { value: o }, o)));
      if (options.includes(previous)) box.value = previous;
      else if (preferred && options.includes(preferred)) box.value = preferred;
    };
    keep(paramBox, byVariety, byVariety[0]);
    keep(metricBox, metrics, sorted || metrics[0]);
    const draw = () => drawScatter(runs, paramBox.value, metricBox.value);
    paramBox.onchange = draw;
    metricBox.onchange = draw;
    draw();
  }

  function drawScatter(runs, param, metric) {
    const box = MLH.$("scatter-chart");
    if (box.chart) { box.chart.destroy(); box.chart = null; }
    box.replaceChildren();
    const pairs = runs.filter((r) => r.params[param] !== undefined && r.metrics[metric] !== null
      && r.metrics[metric] !== undefined).map((r) => [r.params[param], r.metrics[metric], r.name]);
    box.dataset.points = String(pairs.length);
    box.dataset.series = "1";
    if (!param || !metric || !pairs.length) {
      box.appendChild(empty("No run has both a param and a metric to plot."));
      return;
    }
    const numeric = pairs.every(([x]) => x !== "" && Number.isFinite(Number(x)));
    const categories = numeric ? [] : [...new Set(pairs.map(([x]) => x))].sort();
    const xOf = (x) => (numeric ? Number(x) : categories.indexOf(x));
    pairs.sort((a, b) => xOf(a[0]) - xOf(b[0]));
    const xs = pairs.map(([x]) => xOf(x));
    const ys = pairs.map(([, y]) => y);
    const names = pairs.map(([, , n]) => n);
    const lo = Math.min(...xs);
    const hi = Math.max(...xs);
    const pad = hi === lo ? 1 : (hi - lo) * 0.08;
    box.chart = new uPlot({
      width: Math.max(320, Math.floor(box.clientWidth || 640)), height: 260,
      scales: { x: { time: false, range: [lo - pad, hi + pad] } },
      axes: [
        { label: param, size: 44, values: (u, splits) => splits.map((v) => (numeric ? MLH.tick(v)
          : Number.isInteger(v) && categories[v] !== undefined ? String(categories[v]).slice(0, 14) : "")),
        ...(numeric ? {} : { splits: () => categories.map((_, i) => i) }) },
        { label: metric, size: 60, values: (u, splits) => splits.map((v) => MLH.tick(v)) }],
      series: [
        { label: param, value: (u, v, si, i) => (i === null || i === undefined ? "—" : `${numeric ? v : categories[v]} (${names[i]})`) },
        { label: metric, stroke: "#1f6feb", fill: "rgba(31,111,235,.3)", width: 0,
          paths: () => null, points: { show: true, size: 9, stroke: "#1f6feb", fill: "rgba(31,111,235,.45)" },
          value: (u, v) => (v === null || v === undefined ? "—" : Number(v).toPrecision(4)) }],
    }, [xs, ys], box);
  }

  // A metric's points over steps (x: step, not time).
  function stepChart(box, points, key) {
    const xs = points.map((p) => p.step);
    const ys = points.map((p) => p.value);
    box.dataset.points = String(ys.filter((v) => v !== null).length);
    box.dataset.series = "1";
    const lo = Math.min(...xs);
    const hi = Math.max(...xs);
    return new uPlot({
      width: Math.max(280, Math.floor(box.clientWidth || 520)), height: 200,
      scales: { x: { time: false, range: [lo, hi === lo ? lo + 1 : hi] } },
      axes: [{ label: "step", size: 40, values: (u, splits) => splits.map((v) => MLH.tick(v)) },
        { size: 56, values: (u, splits) => splits.map((v) => MLH.tick(v)) }],
      series: [{ label: "step" }, { label: key, stroke: "#1f6feb", width: 2, points: { show: true, size: 5 },
        value: (u, v) => (v === null || v === undefined ? "—" : Number(v).toPrecision(5)) }],
    }, [xs, ys], box);
  }

  // A version "churn:3" as a link to its page (Models), "" for none.
  function versionLink(ref, id) {
    const at = ref ? ref.lastIndexOf(":") : -1;
    if (at < 1) return ref || "";
    const a = link(ref, "models", ref.slice(0, at), ref.slice(at + 1));
    if (id) a.id = id;
    return a;
  }

  // `mlharbor reproduce`'s run: the version it re-ran (tags from pipelines/train_runs.py).
  function reproduction(tags) {
    const ref = tags["mlharbor.reproduces"];
    if (!ref) return "";
    const verdict = tags["mlharbor.reproduction.matches"];
    return h("span", {}, versionLink(ref, "run-reproduces-link"),
      verdict === "true" ? " (metrics matched)" : verdict === "false"
        ? ` (did not match: ${tags["mlharbor.reproduction.differing"] || "the data changed"})` : "");
  }

  // A retraining job's run: the job (Jobs page), its endpoint and trigger (pipelines/retrain_runs.py).
  function jobFacts(tags) {
    const job = tags["mlharbor.job"];
    if (!job || !tags["mlharbor.endpoint"]) return "";
    const a = link(job.slice(0, 8), "jobs", job);
    a.id = "run-job-link";
    return h("span", {}, a, ` for endpoint ${tags["mlharbor.endpoint"]}, trigger ${tags["mlharbor.trigger"] || "?"}`);
  }

  function facts(pairs) {
    const dl = h("dl", { className: "facts" });
    for (const [key, value] of pairs) {
      if (value === null || value === undefined || value === "") continue;
      dl.appendChild(h("dt", {}, key));
      dl.appendChild(h("dd", {}, value));
    }
    return dl;
  }

  async function showRun(experiment, runId) {
    MLH.$("experiments-list").replaceChildren(link(`← experiment ${experiment}`, "experiments", experiment));
    const run = await MLH.getJson("api/v1/runs/" + enc(runId));
    MLH.$("run-title").textContent = `Run ${run.name} (${run.run_id})`;
    fill("run-summary", facts([
      ["experiment", run.experiment], ["status", run.status + (run.error ? `: ${run.error}` : "")],
      ["started", `${when(run.start_time)} by ${run.user || "?"}`], ["took", took(run.duration_s)],
      ["parent run", run.parent_run_id ? link(short(run.parent_run_id), "experiments", experiment, "runs", run.parent_run_id) : ""],
      ["data fingerprint", run.data_fingerprint], ["code version", run.code_version],
      ["model version", versionLink(run.model_version, "run-version-link")],
      ["reproduces", reproduction(run.tags)],
      ["retraining job", jobFacts(run.tags)],
      ["artifacts", run.artifact_uri]]));
    fill("run-metrics", Object.keys(run.metrics).length ? table(["metric", "latest value", "step"],
      Object.entries(run.metrics).map(([k, v]) => [k, metricValue(v), run.metric_steps[k]]), { id: "run-metrics-table" })
      : empty("No metrics."));
    fill("run-params", Object.keys(run.params).length ? table(["param", "value"],
      Object.entries(run.params).map(([k, v]) => [k, clip(v)]), { id: "run-params-table" }) : empty("No params."));
    fill("run-tags", Object.keys(run.tags).length ? table(["tag", "value"],
      Object.entries(run.tags).map(([k, v]) => [k, clip(v)]), { id: "run-tags-table" }) : empty("No tags."));
    const keys = Object.keys(run.metrics);
    const childMetrics = [...new Set(run.children.flatMap((c) => Object.keys(c.metrics)))].slice(0, 4);
    fill("run-children", run.children.length ? table(["run", "name", "status", ...childMetrics],
      run.children.map((c) => [link(short(c.run_id), "experiments", experiment, "runs", c.run_id), c.name,
        statusCell(c.status), ...childMetrics.map((k) => metricValue(c.metrics[k]))]), { id: "run-children-table" })
      : empty("No child runs."));
    MLH.$("run-detail").hidden = false;
    const series = keys.filter((k) => run.metric_steps[k] > 0);
    if (!series.length) {
      fill("run-charts", empty("No metric of this run was logged over steps."));
      return;
    }
    const shown = series.slice(0, MAX_CHARTS);
    const figures = shown.map((k) => {
      const box = h("div", { className: "chart", dataset: { metric: k } });
      return [k, box, h("figure", {}, h("figcaption", {}, k, " ", h("small", {}, "by step")), box)];
    });
    fill("run-charts", ...figures.map(([, , fig]) => fig),
      series.length > shown.length ? h("p", { className: "muted" }, `${series.length - shown.length} more metric(s) over steps not drawn.`) : null);
    await Promise.all(figures.map(async ([k, box]) => {
      const history = await MLH.getJson(`api/v1/runs/${enc(runId)}/metric-history?key=${enc(k)}`);
      box.chart = stepChart(box, history.points, k);
    }));
  }

  function diffValue(value) {
    return value === null || value === undefined ? "—" : typeof value === "number" ? metricValue(value) : String(value);
  }

  async function showDiff(experiment, left, right) {
    MLH.$("experiments-list").replaceChildren(link(`← experiment ${experiment}`, "experiments", experiment));
    const body = await MLH.getJson(`api/v1/runs/${enc(left)}/diff/${enc(right)}`);
    MLH.$("diff-title").textContent = `${body.left.name} vs ${body.right.name}: ${body.differences} difference(s)`;
    const only = MLH.$("diff-only");
    const render = () => {
      const rows = body.rows.filter((r) => !only.checked || !r.same);
      fill("diff-table", table(["", "key",
        link(`${body.left.name} (${short(body.left.run_id)})`, "experiments", experiment, "runs", body.left.run_id),
        link(`${body.right.name} (${short(body.right.run_id)})`, "experiments", experiment, "runs", body.right.run_id)],
      rows.map((r) => ({
        attrs: { className: r.same ? "" : "differs", dataset: { section: r.section, key: r.key } },
        cells: [r.section, r.key, clip(diffValue(r.left)), clip(diffValue(r.right))],
      })), { id: "diff-rows" }));
    };
    only.onchange = render;
    render();
    MLH.$("diff-detail").hidden = false;
  }

  MLH.$("runs-controls").addEventListener("submit", (event) => {
    event.preventDefault();
    const { params } = MLH.route();
    const q = new URLSearchParams();
    const filter = MLH.$("runs-filter").value.trim();
    const order = MLH.$("runs-order").value.trim();
    if (filter) q.set("filter", filter);
    if (order) q.set("order", order);
    const target = hashOf("experiments", params[0] || "Default") + (q.toString() ? "?" + q.toString() : "");
    if (window.location.hash === target) MLH.render();
    else window.location.hash = target.slice(1);
  });

  MLH.pages.experiments = {
    async show(params, query) {
      hideAll();
      const [experiment, kind, a, b] = params;
      if (!experiment) return showList();
      if (kind === "runs" && a) return showRun(experiment, a);
      if (kind === "diff" && a && b) return showDiff(experiment, a, b);
      return showExperiment(experiment, query);
    },
  };
})();
