// Models: the list -> a model's versions (metrics, aliases) -> a version's lineage and report,
// with links to the run that trained it and the runs that reproduced it (Experiments page).
"use strict";

(() => {
  const { h, link, table, fill, empty, number, pairs, when, aliases, clip } = MLH;
  const api = (...parts) => "api/v1/models/" + parts.map((p) => encodeURIComponent(String(p))).join("/");
  const REPRODUCES_TAG = "mlharbor.reproduces";  // pipelines/train_runs.py
  const MAX_REPRODUCTIONS = 20;
  const runLink = (run, id) => {
    const a = link(`${run.name} (${run.run_id.slice(0, 12)})`, "experiments", run.experiment, "runs", run.run_id);
    if (id) a.id = id;
    return a;
  };

  function tags(object) {
    const entries = Object.entries(object || {});
    if (!entries.length) return empty("no tags");
    return h("ul", { className: "tags" }, ...entries.map(([k, v]) => h("li", {}, `${k}=${v}`)));
  }

  // The holdout metrics in a line (cross-validation and baseline ones are in the report);
  // hovering shows every metric.
  function headline(metrics) {
    const main = Object.fromEntries(Object.entries(metrics || {}).filter(([k]) => !k.includes(".")));
    return { value: pairs(main), className: "metrics", title: pairs(metrics) };
  }

  async function showList() {
    const page = await MLH.getJson("api/v1/models?page_size=1000");
    fill("models-list", page.items.length ? table(
      ["model", "description", "latest", "aliases", "tags"],
      page.items.map((m) => ({
        attrs: { dataset: { model: m.name } },
        cells: [link(m.name, "models", m.name), clip(m.description), m.latest_version,
          aliases(m.aliases), clip(pairs(m.tags))],
      })), { id: "models-table" }) : empty("No models registered yet."));
  }

  async function showModel(name) {
    const [model, versions] = await Promise.all([
      MLH.getJson(api(name)), MLH.getJson(api(name, "versions") + "?page_size=1000")]);
    MLH.$("model-title").textContent = model.name;
    MLH.$("model-description").textContent = model.description;
    fill("model-tags", tags(model.tags));
    fill("versions-list", table(
      ["version", "status", "aliases", "metrics", "created", "by", "tags"],
      versions.items.slice().reverse().map((v) => ({
        attrs: { dataset: { version: v.version } },
        cells: [link(`${v.name}:${v.version}`, "models", v.name, v.version),
          { className: v.status === "ready" ? "ok" : "drift", value: v.status + (v.archived ? " (archived)" : "") },
          aliases(Object.fromEntries(v.aliases.map((a) => [a, v.version]))), headline(v.metrics),
          { value: when(v.created_at), className: "nowrap" }, v.created_by, clip(pairs(v.tags))],
      })), { id: "versions-table" }));
    MLH.$("model-detail").hidden = false;
  }

  function lineageRows(lineage) {
    const rows = [];
    const dataset = lineage.dataset || {};
    if (lineage.dataset) {
      rows.push(["dataset", `${dataset.source || dataset.uri || ""} (${dataset.rows ?? "?"} rows, ${dataset.fingerprint || ""})`]);
    }
    for (const key of ["winner", "seed", "code_version", "python", "platform", "recipe_source", "training_seconds"]) {
      if (lineage[key] !== undefined && lineage[key] !== null) rows.push([key, lineage[key]]);
    }
    if (lineage.packages) rows.push(["packages", pairs(lineage.packages)]);
    const checks = lineage.data_checks;
    if (checks) {
      const findings = [...(checks.violations || []), ...(checks.warnings || [])];
      rows.push(["data checks", findings.length ? findings.map((f) => `${f.severity}: ${f.message}`).join("; ") : "no findings"]);
    }
    const known = new Set(["dataset", "winner", "seed", "code_version", "python", "platform",
      "recipe_source", "training_seconds", "packages", "data_checks", "recipe", "schema", "recipe_base_dir",
      "tracking"]);  // the run is linked above the table (runLines)
    for (const [key, value] of Object.entries(lineage)) {
      if (!known.has(key)) rows.push([key, typeof value === "object" ? JSON.stringify(value) : value]);
    }
    return rows;
  }

  function reportNodes(name, version, report) {
    const holdout = report.holdout || {};
    const ci = holdout.ci95 || {};
    const baseline = ((report.baseline || {}).holdout || {}).metrics || {};
    const champion = (((report.champion || {}).holdout) || {}).metrics || {};
    const nodes = [h("p", { id: "report-verdict", className: report.passed === false ? "drift" : "ok" },
      `Task ${report.task || "?"}, primary metric ${report.primary_metric || "?"}, winner ${report.winner || "?"}: ` +
      (report.passed === undefined || report.passed === null ? "no gates" : report.passed ? "gates passed" : "gates failed"))];
    nodes.push(table(["metric", "holdout", "95% CI", "baseline", "champion"],
      Object.entries(holdout.metrics || {}).map(([metric, value]) => [metric, number(value, 4),
        ci[metric] ? `${number(ci[metric][0], 4)} to ${number(ci[metric][1], 4)}` : "—",
        number(baseline[metric], 4), number(champion[metric], 4)]), { id: "report-metrics" }));
    if ((report.gates || []).length) {
      nodes.push(table(["gate", "verdict", "detail"], report.gates.map((g) => [g.gate,
        { className: g.passed ? "ok" : "drift", value: g.passed ? "pass" : "FAIL" }, g.detail]),
      { id: "report-gates" }));
    }
    if (holdout.confusion_matrix) {
      const classes = report.classes || holdout.confusion_matrix.map((_, i) => i);
      nodes.push(h("p", {}, "Confusion matrix (rows: true class, columns: predicted)"));
      nodes.push(table(["", ...classes.map(String)], holdout.confusion_matrix.map((row, i) =>
        [String(classes[i]), ...row]), { id: "report-confusion" }));
    }
    nodes.push(h("p", {}, h("a", { href: api(name, "versions", version, "report") + "?format=html",
      target: "_blank", rel: "noopener", id: "report-html" }, "Full report with curves"), " · ",
      h("a", { href: `ui/models/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}/card`,
        id: "model-card-link" }, "Model card")));
    return nodes;
  }

  // The run that trained the version (lineage "tracking", written by `mlharbor train`, a
  // retraining job, the Python API and MLflow's register_model) and the runs that reproduced
  // it (`mlharbor reproduce`), each a link to its page on the Experiments page.
  async function runLines(ref, lineage) {
    const runId = String((lineage.tracking || {}).run_id || "");
    const lines = [];
    if (runId) {
      try {
        const run = await MLH.getJson("api/v1/runs/" + encodeURIComponent(runId));
        lines.push(h("p", { id: "version-run" }, "Trained in run ", runLink(run, "version-run-link"),
          ` of experiment ${run.experiment} (${run.status})`));
      } catch (err) {
        if (err.status !== 404 && err.status !== 400) throw err;
        lines.push(h("p", { id: "version-run", className: "muted" }, `Trained in run ${runId}, which is no longer stored.`));
      }
    }
    if (!ref.includes("'")) {
      const q = new URLSearchParams({ filter: `tags.\`${REPRODUCES_TAG}\` = '${ref}'`,
        max_results: String(MAX_REPRODUCTIONS) });
      const found = (await MLH.getJson("api/v1/runs?" + q.toString())).runs.filter((r) => !r.parent_run_id);
      if (found.length) {
        const box = h("p", { id: "version-reproductions" }, "Reproduced in ");
        found.forEach((r, i) => {
          const verdict = r.tags["mlharbor.reproduction.matches"];
          box.append(i ? ", " : "", runLink(r), verdict ? ` (${verdict === "true" ? "matched" : "did not match"})` : "");
        });
        lines.push(box);
      }
    }
    return lines;
  }

  async function showVersion(name, version) {
    const lineage = await MLH.getJson(api(name, "versions", version, "lineage"));
    MLH.$("version-title").textContent = lineage.ref;
    fill("version-summary", h("p", {}, `Aliases: ${lineage.aliases.join(", ") || "none"}; ` +
      `reference profile: ${lineage.has_reference_profile ? "stored" : "none"}`),
    ...await runLines(lineage.ref, lineage.lineage));
    fill("version-lineage", table(["field", "value"], lineageRows(lineage.lineage), { id: "lineage-table" }));
    fill("version-moves", lineage.alias_moves.length ? table(["at", "alias", "from", "to", "by", "reason"],
      lineage.alias_moves.slice().reverse().map((m) => [when(m.at), m.alias, m.from_version, m.to_version, m.actor, m.reason]))
      : empty("No alias ever pointed here."));
    if (lineage.has_evaluation) {
      const body = await MLH.getJson(api(name, "versions", version, "report"));
      fill("version-report", ...reportNodes(name, version, body.report));
    } else {
      fill("version-report", empty("No evaluation report: this version was not trained by `mlharbor train`."));
    }
    MLH.$("version-detail").hidden = false;
  }

  MLH.pages.models = {
    async show(params) {
      MLH.$("model-detail").hidden = true;
      MLH.$("version-detail").hidden = true;
      const [name, version] = params;
      if (!name) return showList();
      MLH.$("models-list").replaceChildren(link("← all models", "models"));
      await showModel(name);
      if (version) await showVersion(name, version);
    },
  };
})();
