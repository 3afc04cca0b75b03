// Jobs: the list (#/jobs) and one job (#/jobs/{id}) with each step's timeline on one time axis,
// what each step found or decided (snapshot, challenger and gates, canary weights, guards and
// tests, A/B effect with its interval), and the commands that approve, reject or cancel it.
//
// The dashboard changes nothing itself: its session cookie is honoured for GET/HEAD only (so
// another site cannot make a signed-in browser act), so the actions are shown as one-line
// commands to copy: the CLI on a host sharing the metadata store, or curl with an API key.
"use strict";

(() => {
  const { h, link, table, fill, empty, when, number, clip } = MLH;
  const REFRESH_S = 3;
  const ACTIVE = ["queued", "running", "waiting"];
  const SVG = "http://www.w3.org/2000/svg";

  const badge = (state) => h("span", { className: `badge state-${state}`, dataset: { state } }, state);
  const seconds = (from, to) => (from ? ((to ? Date.parse(to) : Date.now()) - Date.parse(from)) / 1000 : null);

  // 75 s -> "1 min 15 s"; null -> "—".
  MLH.duration = (s) => {
    if (s === null || s === undefined || Number.isNaN(s)) return "—";
    if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.round((s % 86400) / 3600)} h`;
  };

  // When the job's work began (its first step), else when it was asked for; and how long it
  // has run (still running: until now).
  function started(job) {
    const first = job.timeline.map((t) => t.started_at).filter(Boolean).sort()[0];
    return first || null;
  }

  function jobDuration(job) {
    const from = started(job);
    return from ? seconds(from, ACTIVE.includes(job.state) ? null : job.finished_at) : null;
  }

  function trigger(job) {
    const r = job.request || {};
    return [r.trigger, r.reason].filter(Boolean).join(": ");
  }

  async function showList(query) {
    const state = query.get("state") || "";
    MLH.$("jobs-state").value = state;
    const body = await MLH.getJson("api/v1/jobs?limit=200" + (state ? "&state=" + encodeURIComponent(state) : ""));
    fill("jobs-list", body.items.length ? table(
      ["job", "state", "endpoint", "kind", "trigger / reason", "started", "duration", "steps done"],
      body.items.map((j) => ({
        attrs: { dataset: { job: j.id, state: j.state } },
        cells: [link(j.id.slice(0, 8), "jobs", j.id),
          h("span", { className: "nowrap" }, badge(j.state),
            j.outcome === j.state ? "" : " " + j.outcome.replace(/_/g, " ")),
          j.endpoint, j.kind, clip(trigger(j)),
          started(j) ? { value: when(started(j)), className: "nowrap" }
            : { value: "not yet", className: "muted nowrap", title: `asked at ${when(j.created_at)}` },
          { value: MLH.duration(jobDuration(j)), className: "nowrap" },
          `${j.timeline.filter((t) => t.state === "succeeded").length} of ${j.timeline.length}`],
      })), { id: "jobs-table" })
      : empty(state ? `No ${state} jobs.` : "No job has run yet: a policy's trigger or `mlharbor retrain ENDPOINT` starts one."));
    return body.items.some((j) => ACTIVE.includes(j.state));
  }

  // -- the timeline: one bar per step from its start to its end (running: now) -------------

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Tick labels: time since the first step began for a short job (seconds apart would
  // repeat a clock time), the UTC clock for a long one.
  function tickLabel(ms, t0, span) {
    if (span < 120000) return `+${((ms - t0) / 1000).toFixed(span < 10000 ? 1 : 0)} s`;
    if (span < 7200000) return `+${Math.round((ms - t0) / 60000)} min`;
    const iso = new Date(ms).toISOString();
    return span < 86400000 ? iso.slice(11, 16) + "Z" : iso.slice(5, 16).replace("T", " ");
  }

  function drawTimeline(job) {
    const box = MLH.$("job-timeline");
    const steps = job.timeline;
    const now = Date.now();
    const starts = steps.map((s) => (s.started_at ? Date.parse(s.started_at) : null));
    const ends = steps.map((s, i) => (starts[i] === null ? null
      : s.finished_at ? Date.parse(s.finished_at) : now));
    const known = starts.filter((v) => v !== null);
    box.dataset.bars = String(known.length);
    if (!known.length) {
      box.replaceChildren(MLH.empty("No step has started yet."));
      return;
    }
    const t0 = Math.min(...known);
    const t1 = Math.max(t0 + 1000, ...ends.filter((v) => v !== null));
    const width = Math.max(480, Math.floor(box.clientWidth || 900));
    const left = 150;
    const right = 70;
    const row = 26;
    const height = steps.length * row + 34;
    const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - right);
    const chart = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": "step timeline" });
    // The axis: five ticks over the job's span.
    for (let k = 0; k <= 4; k++) {
      const t = t0 + ((t1 - t0) * k) / 4;
      chart.appendChild(svg("line", { x1: x(t), x2: x(t), y1: 4, y2: height - 22, class: "grid" }));
      chart.appendChild(svg("text", { x: x(t), y: height - 6, class: "tick", "text-anchor": k === 0 ? "start" : k === 4 ? "end" : "middle" },
        tickLabel(t, t0, t1 - t0)));
    }
    chart.appendChild(svg("text", { x: left - 8, y: height - 6, class: "tick", "text-anchor": "end" },
      `from ${new Date(t0).toISOString().slice(11, 19)}Z`));
    steps.forEach((s, i) => {
      const y = 6 + i * row;
      chart.appendChild(svg("text", { x: left - 8, y: y + 15, class: "step", "text-anchor": "end" }, s.step));
      if (starts[i] === null) {
        chart.appendChild(svg("text", { x: left + 4, y: y + 15, class: "pending" }, s.state));
        return;
      }
      const x0 = x(starts[i]);
      const w = Math.max(3, x(ends[i]) - x0);
      const bar = svg("rect", { x: x0, y, width: w, height: row - 8, rx: 3, class: `bar ${s.state}`,
        "data-step": s.step, "data-state": s.state });
      bar.appendChild(svg("title", {}, `${s.step}: ${s.state}, ${when(s.started_at)} to ` +
        `${s.finished_at ? when(s.finished_at) : "now"} (${MLH.duration(seconds(s.started_at, s.finished_at))})` +
        (s.attempts > 1 ? `, ${s.attempts} attempts` : "")));
      chart.appendChild(bar);
      chart.appendChild(svg("text", { x: Math.min(x0 + w + 6, width - right + 4), y: y + 15, class: "took" },
        MLH.duration(seconds(s.started_at, s.finished_at))));
    });
    box.replaceChildren(chart);
  }

  // -- what each step found or decided ------------------------------------------------------

  // Name/value pairs in a compact grid; counts as counts (110, not 110.0000), other numbers
  // to four places.
  const kv = (object) => h("dl", { className: "facts metrics" }, ...Object.entries(object || {}).flatMap(
    ([k, v]) => [h("dt", {}, k.replace(/_/g, " ")),
      h("dd", {}, typeof v !== "number" ? MLH.text(v) : Number.isInteger(v) ? String(v) : number(v, 4))]));

  const weights = (w) => Object.entries(w || {}).map(([ref, pct]) => `${ref} ${pct}%`).join(" · ");

  // An A/B or accuracy look: the effect (challenger minus control) with its interval, the test.
  function testBlock(t, phase) {
    const p = t.p_value === null ? "not tested before the horizon" : `p = ${Number(t.p_value).toPrecision(3)}`;
    const bound = t.boundary_z === null ? "" : `, boundary |z| ≥ ${number(t.boundary_z, 2)}`;
    return h("div", { className: "test", dataset: { verdict: t.verdict } },
      h("p", { className: "effect" }, h("strong", {}, phase === "ab" ? "Effect size: " : "Accuracy effect: "),
        `${signed(t.effect)} [${signed(t.ci_low)}, ${signed(t.ci_high)}] `,
        h("small", { className: "muted" }, "challenger minus champion, " +
          (t.design === "sequential" ? "repeated confidence interval" : "confidence interval"))),
      h("p", {}, `${t.design} test, look ${t.look} (information ${(100 * t.information_fraction).toFixed(0)}%): ` +
        `z = ${number(t.z, 2)}${bound}, ${p}, alpha spent ${number(t.alpha_spent, 4)}; ` +
        `n = ${t.n_control} champion / ${t.n_challenger} challenger of ${t.planned_n_per_variant} planned; ` +
        `verdict ${t.verdict.replace(/_/g, " ")}.`));
  }

  const signed = (v) => (v === null || v === undefined ? "—" : (v >= 0 ? "+" : "") + Number(v).toFixed(4));

  function decisionBlock(d) {
    const cls = d.verdict === "rollback" ? "drift" : d.verdict === "hold" ? "" : "ok";
    return h("div", { className: "decision", dataset: { verdict: d.verdict, phase: d.phase } },
      h("p", {}, h("span", { className: `badge verdict-${d.verdict}` }, d.verdict), " ",
        h("span", { className: cls }, d.reason)),
      h("p", {}, h("strong", {}, "Weights after: "), weights(d.weights) || "—"),
      d.test ? testBlock(d.test, d.phase) : null,
      Object.keys(d.guard_metrics || {}).length ? h("details", { open: "" },
        h("summary", {}, "Guard metrics"), kv(d.guard_metrics)) : null);
  }

  function snapshotBlock(r) {
    const s = r.snapshot || {};
    return h("div", {},
      h("p", {}, h("strong", {}, "Snapshot "), h("code", {}, s.fingerprint || "—"),
        ` · ${s.rows} rows · target ${s.target || "—"} · base ${r.base || "—"}`),
      (s.parts || []).length ? table(["source", "rows", "fingerprint", "uri"], s.parts.map(
        (p) => [p.kind, p.rows, clip(p.fingerprint), clip(p.uri)])) : null);
  }

  function validateBlock(r) {
    const names = Object.keys(r.metrics || {});
    return h("div", {},
      h("p", {}, h("strong", {}, "Challenger "), r.challenger || r.ref, ` judged against ${r.base || r.champion_ref || "—"} ` +
        `on ${r.holdout_rows || "?"} holdout rows (primary metric ${r.primary_metric}).`),
      names.length ? table(["metric", "challenger", "champion", "naive baseline"], names.map((n) => [
        n, number(r.metrics[n], 4), r.champion ? number(r.champion[n], 4) : "—",
        r.baseline ? number(r.baseline[n], 4) : "—"])) : null,
      h("ul", { className: "gates" }, ...(r.gates || []).map((g) => h("li", { className: g.passed ? "ok" : "drift" },
        `${g.passed ? "✓" : "✗"} ${g.gate}: ${g.detail}`))));
  }

  function resultBlock(step) {
    const r = step.result;
    const parts = [];
    if (step.error) parts.push(h("p", { className: "drift step-error" }, step.error));
    if (!r || typeof r !== "object") return parts;
    if (r.decision) parts.push(decisionBlock(r.decision));
    if (r.snapshot) parts.push(snapshotBlock(r));
    if (r.gates) parts.push(validateBlock(r));
    else if (r.version && r.status) {
      parts.push(h("p", {}, h("strong", {}, "Challenger "), `${r.version} (${r.status})` +
        (r.winner ? `, winning candidate ${r.winner}` : "") + (r.base ? `, retrained from ${r.base}` : "") +
        (r.reused ? "; registered before its runner stopped, reused" : "")));
      if (r.run_id) {
        const run = link(`run ${r.run_id.slice(0, 12)}`, "experiments", r.experiment || r.version.split(":")[0], "runs", r.run_id);
        run.id = "job-run-link";
        parts.push(h("p", {}, "Trained in ", run, " (Experiments page)"));
      }
    }
    if (r.approval) {
      const a = r.approval;
      parts.push(h("p", { className: a.approved ? "ok" : "drift" },
        `${a.approved ? "Approved" : "Rejected"} by ${a.actor} at ${when(a.at)}` + (a.reason ? `: ${a.reason}` : "")));
    }
    if (!parts.length || (parts.length === 1 && step.error)) {
      const rest = JSON.stringify(r);
      if (rest !== "{}") parts.push(h("p", { className: "muted" }, clip(rest).value));
    }
    return parts;
  }

  function drawSteps(job) {
    const box = MLH.$("job-steps");
    box.replaceChildren(...job.timeline.map((t, i) => {
      const step = job.steps[i];
      return h("article", { className: `step-card ${t.state}`, dataset: { step: t.step, state: t.state } },
        h("h5", {}, `${i + 1}. ${t.step} `, badge(t.state),
          h("small", { className: "muted" }, t.started_at ? ` ${when(t.started_at)} · ` +
            `${MLH.duration(seconds(t.started_at, t.finished_at))}` + (t.attempts > 1 ? ` · ${t.attempts} attempts` : "") : "")),
        ...resultBlock(step));
    }));
  }

  // -- actions: buttons that approve, reject or cancel, and the same as commands ----------

  // A shell word in single quotes: safe to paste whatever the reason holds.
  const quote = (text) => `'${String(text).replace(/'/g, "'\\''")}'`;
  const apiUrl = (path) => new URL(path, document.baseURI).href;

  function commands(job, verb, reason) {
    const cli = `mlharbor jobs ${verb} ${job.id}` + (reason ? ` --reason ${quote(reason)}` : "");
    const curl = `curl -fsS -X POST -H "Authorization: Bearer $MLHARBOR_KEY" -H 'Content-Type: application/json' ` +
      `--data ${quote(JSON.stringify({ reason }))} ${quote(apiUrl(`api/v1/jobs/${encodeURIComponent(job.id)}/${verb}`))}`;
    return [cli, curl];
  }

  function commandLine(text, id) {
    const code = h("code", { className: "command", id }, text);
    const button = h("button", { type: "button", className: "copy" }, "Copy");
    button.addEventListener("click", () => {
      const range = document.createRange();
      range.selectNodeContents(code);
      window.getSelection().removeAllRanges();
      window.getSelection().addRange(range);
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(code.textContent).then(() => { button.textContent = "Copied"; },
          () => { button.textContent = "Selected: press Ctrl+C"; });
      } else {
        button.textContent = "Selected: press Ctrl+C";
      }
    });
    return h("div", { className: "command-line" }, code, button);
  }

  function drawActions(job, me) {
    const box = MLH.$("job-actions");
    const may = (me.actions || []).includes("endpoint.write") || me.name === null;
    const verbs = job.state === "waiting" ? ["approve", "reject", "cancel"]
      : ACTIVE.includes(job.state) ? ["cancel"] : [];
    box.dataset.state = job.state;
    if (!verbs.length) {
      box.replaceChildren();
      return;
    }
    const waiting = job.timeline.find((t) => t.state === "waiting");
    const intro = job.state === "waiting"
      ? `Step ${waiting ? waiting.step : ""} waits for a human to approve or reject the rollout.`
      : job.state === "running" ? "The job is running: cancelling stops it between steps."
        : "The job is queued: cancelling ends it now.";
    if (!may) {
      box.replaceChildren(h("div", { className: "actions" }, h("p", {}, intro),
        h("p", { className: "muted", id: "job-actions-denied" },
          "Approving, rejecting and cancelling need endpoint.write on every endpoint (a deployer or admin); your grants do not include it.")));
      return;
    }
    const reason = h("input", { id: "job-reason", type: "text", maxlength: "2000", size: "60",
      placeholder: "why (kept in the audit trail)" });
    const lines = h("div", { id: "job-commands" });
    const outcome = h("p", { id: "job-action-result", role: "status" });
    const buttons = h("div", { className: "action-buttons" }, ...verbs.map((verb) => {
      const button = h("button", { type: "button", id: `job-${verb}`, className: `action ${verb}` },
        verb[0].toUpperCase() + verb.slice(1));
      button.addEventListener("click", async () => {
        button.disabled = true;
        try {
          await MLH.postJson(`api/v1/jobs/${encodeURIComponent(job.id)}/${verb}`,
            { reason: reason.value.trim() || null });
          outcome.className = "ok";
          outcome.textContent = `Done: ${verb}.`;
          drawnActions = null;  // redraw for the job's new state
          await drawJob(job.id, me);
        } catch (error) {
          outcome.className = "drift";
          outcome.textContent = `${verb} failed: ${error.message}`;
          button.disabled = false;
        }
      });
      return button;
    }));
    const draw = () => lines.replaceChildren(...verbs.flatMap((verb) => {
      const [cli, curl] = commands(job, verb, reason.value.trim());
      return [h("h5", {}, verb[0].toUpperCase() + verb.slice(1)),
        commandLine(cli, `cmd-${verb}-cli`), commandLine(curl, `cmd-${verb}-curl`)];
    }));
    reason.addEventListener("input", draw);
    draw();
    box.replaceChildren(h("div", { className: "actions" }, h("p", {}, intro),
      h("label", {}, "Reason ", reason), buttons, outcome,
      h("details", {}, h("summary", {}, "Or run it as a command"),
        h("p", { className: "muted" }, "The CLI on a host that shares the metadata store, or curl " +
          "with MLHARBOR_KEY set to an API key holding endpoint.write."), lines)));
  }

  let drawnActions = null;  // job state the actions box was drawn for (keeps a typed reason)

  async function drawJob(id, me) {
    const job = await MLH.getJson(`api/v1/jobs/${encodeURIComponent(id)}`);
    MLH.$("job-title").replaceChildren(`Job ${job.id.slice(0, 8)} `, badge(job.state),
      job.outcome !== job.state ? h("span", { className: "muted" }, ` ${job.outcome.replace(/_/g, " ")}`) : "");
    const req = job.request || {};
    fill("job-summary", h("dl", { className: "facts" },
      ...[["endpoint", job.endpoint], ["kind", job.kind], ["trigger", req.trigger || "—"],
        ["reason", req.reason || "—"], ["asked by", req.requested_by || job.created_by],
        ["asked at", when(job.created_at)], ["started", when(started(job)) || "not yet"],
        ["duration", MLH.duration(jobDuration(job))],
        ["finished", job.finished_at ? when(job.finished_at) : "—"], ["id", job.id]]
        .flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    job.error ? h("p", { className: "drift", id: "job-error" }, job.error) : null);
    if (drawnActions !== job.state) {
      drawActions(job, me);
      drawnActions = job.state;
    }
    drawTimeline(job);
    drawSteps(job);
    return ACTIVE.includes(job.state);
  }

  MLH.pages.jobs = {
    async show(params, query) {
      const [id] = params;
      MLH.$("job-detail").hidden = !id;
      MLH.$("jobs-controls").hidden = Boolean(id);
      drawnActions = null;
      if (!id) {
        if (await showList(query)) MLH.every(REFRESH_S, () => showList(query).catch((err) => MLH.status("Error: " + err.message)));
        return;
      }
      MLH.$("jobs-list").replaceChildren(link("← all jobs", "jobs"));
      const me = await MLH.whoamiReady;
      if (await drawJob(id, me)) {
        // Refresh while the job is active: the timer stops when it ends, or with the page.
        const timer = window.setInterval(() => drawJob(id, me).then((active) => {
          MLH.status(`Updated ${new Date().toISOString()}`);
          if (!active) window.clearInterval(timer);
        }).catch((err) => MLH.status("Error: " + err.message)), REFRESH_S * 1000);
        MLH.timers.push(timer);
      }
    },
  };

  MLH.$("jobs-controls").addEventListener("submit", (event) => {
    event.preventDefault();
    const state = MLH.$("jobs-state").value;
    window.location.hash = "#/jobs" + (state ? "?" + new URLSearchParams({ state }) : "");
  });
})();
