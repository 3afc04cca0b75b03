// Endpoints: routes with their weights, shadow and fallbacks; live traffic charts (throughput,
// latency percentiles, error rate) refreshed every few seconds; the observed split; revisions.
"use strict";

(() => {
  const { h, link, table, fill, empty, number, percent, when } = MLH;
  const REFRESH_S = 5;
  const STEPS = { "15m": "15s", "1h": "1m", "6h": "5m", "24h": "15m" };

  function weights(spec) {
    const total = spec.routes.reduce((sum, r) => sum + r.weight, 0);
    return spec.routes.map((r) => `${r.ref} ${(100 * r.weight / total).toFixed(0)}%`).join(", ");
  }

  async function showList() {
    const [body, logged] = await Promise.all([MLH.getJson("api/v1/endpoints"),
      MLH.getJson("api/v1/monitoring/endpoints")]);
    const stored = new Set(body.items.map((e) => e.name));
    // Served without being stored (`mlharbor serve churn@champion`): known by their log.
    const adHoc = logged.endpoints.filter((name) => !stored.has(name));
    const rows = body.items.map((e) => ({
      attrs: { dataset: { endpoint: e.name } },
      cells: [link(e.name, "endpoints", e.name), weights(e.spec), e.spec.shadow || "—",
        e.spec.fallback.join(" → ") || "—", e.revision, when(e.updated_at)],
    })).concat(adHoc.map((name) => ({
      attrs: { dataset: { endpoint: name } },
      cells: [link(name, "endpoints", name), "served ad hoc (not stored)", "—", "—", "—", "—"],
    })));
    fill("endpoints-list", rows.length ? table(
      ["endpoint", "routes (traffic split)", "shadow", "fallback", "revision", "updated"],
      rows, { id: "endpoints-table" }) : empty("No endpoints yet."));
  }

  async function showAdHoc(name) {
    MLH.$("endpoint-title").textContent = name;
    MLH.$("endpoint-description").textContent =
      "Served ad hoc (mlharbor serve MODEL), not a stored endpoint: traffic from its log.";
    fill("endpoint-routes", empty("No stored routes."));
    fill("endpoint-history", empty("No revisions: the endpoint is not stored."));
  }

  const ms = (seconds) => (seconds === null || seconds === undefined ? null : 1000 * seconds);

  function card(label, value, id) {
    return h("div", { className: "card", id }, h("div", { className: "label" }, label),
      h("div", { className: "value" }, value));
  }

  async function drawTraffic(name) {
    const win = MLH.$("traffic-window").value;
    const base = `api/v1/monitoring/endpoints/${encodeURIComponent(name)}`;
    const [t, res] = await Promise.all([
      MLH.getJson(`${base}/traffic?window=${win}&step=${STEPS[win] || "1m"}`),
      MLH.getJson(`${base}/resources`)]);
    // Every chart shows the same span, the window asked for, with each bucket drawn at its
    // middle; a bucket without requests is 0 requests/s (idle), not a gap, so the chart's
    // average is the summary's rate.
    const xRange = [Date.parse(t.start) / 1000, Date.parse(t.end) / 1000];
    const edges = t.buckets.map((b) => Date.parse(b.start) / 1000).concat([xRange[1]]);
    const xs = t.buckets.map((_, i) => (edges[i] + edges[i + 1]) / 2);
    const opts = { xRange, height: 200 };
    MLH.timeChart("chart-throughput", xs, [
      { label: "requests/s", values: t.buckets.map((b) => b.requests_per_s) }], { ...opts, unit: "/s" });
    MLH.timeChart("chart-latency", xs, [
      { label: "p50", values: t.buckets.map((b) => ms(b.latency_p50_s)) },
      { label: "p95", values: t.buckets.map((b) => ms(b.latency_p95_s)) },
      { label: "p99", values: t.buckets.map((b) => ms(b.latency_p99_s)) }], { ...opts, unit: " ms" });
    MLH.timeChart("chart-errors", xs, [
      { label: "error rate", values: t.buckets.map((b) => b.error_rate), stroke: "#d92d20" }],
    { ...opts, range: [0, 1], unit: "%" });
    const tot = t.totals;
    const live = res.processes.filter((p) => !p.stale);
    const sum = (key) => (live.length ? live.reduce((a, p) => a + (p[key] || 0), 0) : null);
    fill("traffic-totals",
      h("p", { id: "traffic-summary" },
        `${tot.requests} requests (${number(tot.requests_per_s, 2)}/s), ` +
        `p50 ${number(ms(tot.latency_p50_s), 1)} ms, p95 ${number(ms(tot.latency_p95_s), 1)} ms, ` +
        `p99 ${number(ms(tot.latency_p99_s), 1)} ms, error rate ${percent(tot.error_rate)}, ` +
        `${tot.shadow_requests} shadow copies`),
      h("div", { className: "cards" },
        card("requests", tot.requests), card("throughput", `${number(tot.requests_per_s, 2)}/s`),
        card("latency p99", `${number(ms(tot.latency_p99_s), 1)} ms`),
        card("error rate", percent(tot.error_rate)),
        card("CPU (serving)", live.length ? `${number(sum("cpu_seconds"), 1)} s` : "—", "card-cpu"),
        card("memory (serving)", live.length ? MLH.bytes(sum("resident_bytes")) : "—", "card-memory")));
    drawResources(res);
    fill("endpoint-split", t.split.length ? table(["route", "served version", "requests", "share"],
      t.split.map((s) => [s.model_ref, s.version, s.requests, percent(s.share)]), { id: "split-table" })
      : empty("No requests in this window."));
    MLH.$("traffic-updated").textContent = `updated ${new Date().toISOString()}`;
  }

  // The serving processes that serve this endpoint (their own samples: CPU seconds since they
  // started, resident memory) and the versions each has loaded with their memory estimate.
  function drawResources(res) {
    if (!res.processes.length) {
      fill("resources-body", empty(res.note || "No serving process has reported yet."));
      return;
    }
    const procs = table(["process", "CPU", "memory", "sampled"], res.processes.map((p) => ({
      attrs: { dataset: { process: p.process } },
      cells: [p.process + (p.endpoints.length > 1 ? ` (+${p.endpoints.length - 1} endpoints)` : ""),
        `${number(p.cpu_seconds, 1)} s`, MLH.bytes(p.resident_bytes),
        { value: p.stale ? `stale, ${when(p.at)}` : `${number(p.age_s, 0)} s ago`,
          className: p.stale ? "drift" : "ok" }],
    })), { id: "processes-table" });
    const models = res.processes.flatMap((p) => p.models.map((m) => [
      `${m.model}:${m.version}`, MLH.bytes(m.memory_bytes), p.process]));
    fill("resources-body", procs, h("h4", {}, "Loaded models"),
      models.length ? table(["version", "memory (estimate)", "process"], models,
        { id: "models-memory-table" }) : empty("No version loaded."),
      h("p", { className: "muted" }, res.note));
  }

  async function showEndpoint(name) {
    const [stored, logged] = await Promise.all([MLH.getJson("api/v1/endpoints"),
      MLH.getJson("api/v1/monitoring/endpoints")]);
    if (!stored.items.some((e) => e.name === name) && logged.endpoints.includes(name)) {
      await showAdHoc(name);
      return showTraffic(name);
    }
    const [endpoint, history] = await Promise.all([
      MLH.getJson(`api/v1/endpoints/${encodeURIComponent(name)}`),
      MLH.getJson(`api/v1/endpoints/${encodeURIComponent(name)}/history`)]);
    const spec = endpoint.spec;
    MLH.$("endpoint-title").textContent = `${endpoint.name} (revision ${endpoint.revision})`;
    MLH.$("endpoint-description").textContent = spec.description;
    const total = spec.routes.reduce((sum, r) => sum + r.weight, 0);
    const rows = spec.routes.map((r) => ["route", r.ref, r.weight, percent(r.weight / total)]);
    if (spec.shadow) rows.push(["shadow", spec.shadow, "copy", "—"]);
    spec.fallback.forEach((f, i) => rows.push([`fallback ${i + 1}`, f, "", "—"]));
    if (spec.default_answer) rows.push(["default answer", JSON.stringify(spec.default_answer.prediction), "", "—"]);
    fill("endpoint-routes", table(["role", "reference", "weight", "share"], rows, { id: "routes-table" }));
    fill("endpoint-history", table(["revision", "action", "at", "by", "reason", "routes"],
      history.items.slice().reverse().map((c) => [c.revision, c.action, when(c.at), c.actor, c.reason,
        c.spec ? c.spec.routes.map((r) => `${r.ref} (${r.weight})`).join(", ") : "—"])));
    return showTraffic(name);
  }

  async function showTraffic(name) {
    MLH.$("endpoint-detail").hidden = false;
    await drawTraffic(name);
    MLH.every(REFRESH_S, () => drawTraffic(name).catch((err) => MLH.status("Error: " + err.message)));
    MLH.$("traffic-window").onchange = () => drawTraffic(name).catch((err) => MLH.status("Error: " + err.message));
  }

  MLH.pages.endpoints = {
    async show(params) {
      MLH.$("endpoint-detail").hidden = true;
      const [name] = params;
      if (!name) return showList();
      MLH.$("endpoints-list").replaceChildren(link("← all endpoints", "endpoints"));
      await showEndpoint(name);
    },
  };
})();
