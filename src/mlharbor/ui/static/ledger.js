// The deployment ledger (alias moves, endpoint revisions, deployments) and the audit trail,
// newest first, with "older" buttons that page back in time.
"use strict";

(() => {
  const { table, fill, empty, when, clip } = MLH;

  function deploymentDetail(e) {
    if (e.kind === "alias") {
      return e.to_version === null ? `removed (was ${e.from_version})`
        : `${e.from_version === null ? "set" : "v" + e.from_version + " →"} v${e.to_version}`;
    }
    if (e.kind === "endpoint") {
      const routes = (e.routes || []).map((r) => `${r.ref} (${r.weight})`).join(", ");
      return `revision ${e.revision}${routes ? ": " + routes : ""}${e.shadow ? "; shadow " + e.shadow : ""}`;
    }
    return `${e.ref || ""} → ${e.target || ""}${e.image ? " (" + e.image + ")" : ""}`;
  }

  function pager(buttonId, load) {
    let before = null;
    let rows = [];
    const button = MLH.$(buttonId);
    async function next() {
      const page = await load(before);
      rows = rows.concat(page.items);
      before = page.next_before;
      button.hidden = !before;
      return rows;
    }
    return next;
  }

  MLH.pages.deployments = {
    async show() {
      const draw = (items) => fill("deployments", items.length ? table(
        ["at", "kind", "subject", "action", "detail", "by", "outcome", "reason"],
        items.map((e) => ({
          attrs: { dataset: { kind: e.kind } },
          cells: [{ value: when(e.at), className: "nowrap" }, e.kind, e.subject, e.action,
            deploymentDetail(e), e.actor,
            { className: e.outcome === "success" ? "ok" : "drift", value: e.outcome }, e.reason],
        })), { id: "deployments-table" }) : empty("Nothing was deployed yet."));
      const next = pager("deployments-more", (before) => MLH.getJson(
        "api/v1/deployments?limit=100" + (before ? "&before=" + encodeURIComponent(before) : "")));
      draw(await next());
      MLH.$("deployments-more").onclick = () => next().then(draw)
        .catch((err) => MLH.status("Error: " + err.message));
    },
  };

  MLH.pages.audit = {
    async show(_params, query) {
      const action = query.get("action") || "";
      MLH.$("audit-action").value = action;
      const draw = (items) => fill("audit", items.length ? table(
        ["seq", "at", "actor", "action", "resource", "outcome", "details"],
        items.map((e) => ({
          attrs: { dataset: { seq: e.seq } },
          cells: [e.seq, { value: when(e.at), className: "nowrap" }, e.actor, e.action, e.resource,
            { className: e.outcome === "success" ? "ok" : "drift", value: e.outcome },
            clip(JSON.stringify(e.details))],
        })), { id: "audit-table" }) : empty("No records match."));
      const next = pager("audit-more", (before) => MLH.getJson("api/v1/audit?limit=100" +
        (action ? "&action=" + encodeURIComponent(action) : "") + (before ? "&before=" + before : "")));
      draw(await next());
      MLH.$("audit-more").onclick = () => next().then(draw)
        .catch((err) => MLH.status("Error: " + err.message));
    },
  };

  MLH.$("audit-controls").addEventListener("submit", (event) => {
    event.preventDefault();
    const action = MLH.$("audit-action").value.trim();
    window.location.hash = "#/audit" + (action ? "?" + new URLSearchParams({ action }) : "");
  });
})();
