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

  async function drawTraffic(name) {
    const win = MLH.$("traffic-window").value;
    const base = `api/v1/monitoring/endpoints/${encodeURIComponent(name)}/traffic`;
    const t = await MLH.getJson(`${base}?window=${win}&step=${STEPS[win] || "1m"}`);
    const xs = t.buckets.map((b) => Date.parse(b.start) / 1000);
    const ms = (key) => t.buckets.map((b) => (b[key] === null ? null : 1000 * b[key]));
    MLH.timeChart("chart-throughput", xs, [
      { label: "requests/s", values: t.buckets.map((b) => (b.requests ? b.requests_per_s : null)) }]);
    MLH.timeChart("chart-latency", xs, [
      { label: "p50", values: ms("latency_p50_s") }, { label: "p95", values: ms("latency_p95_s") },
      { label: "p99", values: ms("latency_p99_s") }]);
    MLH.timeChart("chart-errors", xs, [
      { label: "error rate", values: t.buckets.map((b) => b.error_rate), stroke: "#d92d20" }],
    { range: [0, 1] });
    const tot = t.totals;
    fill("traffic-totals", h("p", { id: "traffic-summary" },
      `${tot.requests} requests (${number(tot.requests_per_s, 2)}/s), ` +
      `p50 ${number(tot.latency_p50_s === null ? null : 1000 * tot.latency_p50_s, 1)} ms, ` +
      `p95 ${number(tot.latency_p95_s === null ? null : 1000 * tot.latency_p95_s, 1)} ms, ` +
      `p99 ${number(tot.latency_p99_s === null ? null : 1000 * tot.latency_p99_s, 1)} ms, ` +
      `error rate ${percent(tot.error_rate)}, ${tot.shadow_requests} shadow copies`));
    fill("endpoint-split", t.split.length ? table(["route", "served version", "requests", "share"],
      t.split.map((s) => [s.model_ref, s.version, s.requests, percent(s.share)]), { id: "split-table" })
      : empty("No requests in this window."));
    MLH.$("traffic-updated").textContent = `updated ${new Date().toISOString()}`;
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
