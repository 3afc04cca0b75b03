// The dashboard's router: #/page/part/part?query -> one section shown, its page's show() run.
// Pages (models.js, endpoints.js, monitoring.js, ledger.js, jobs.js) register themselves in MLH.pages.
"use strict";

(() => {
  const DEFAULT = "models";

  MLH.route = () => {
    const hash = window.location.hash.replace(/^#\/?/, "");
    const [path, search] = hash.split("?", 2);
    const decode = (part) => {
      try {
        return decodeURIComponent(part);
      } catch (_err) {  // a malformed escape in a hand-typed link: keep it as typed
        return part;
      }
    };
    const parts = path.split("/").filter(Boolean).map(decode);
    const page = MLH.pages[parts[0]] ? parts[0] : DEFAULT;
    return { page, params: parts.slice(1), query: new URLSearchParams(search || "") };
  };

  let generation = 0;

  MLH.render = async () => {
    const { page, params, query } = MLH.route();
    const mine = ++generation;
    MLH.timers.forEach((t) => window.clearInterval(t));
    MLH.timers = [];
    for (const section of document.querySelectorAll("section.page")) {
      section.hidden = section.id !== "page-" + page;
    }
    for (const a of document.querySelectorAll("#nav a")) {
      a.classList.toggle("current", a.dataset.page === page);
    }
    MLH.$("controls").hidden = !MLH.pages[page].controls;
    MLH.status("Loading…");
    try {
      await MLH.pages[page].show(params, query);
      if (mine === generation) MLH.status(`Updated ${new Date().toISOString()}`);
    } catch (err) {
      if (mine === generation) MLH.status("Error: " + err.message);
    }
  };

  // Who the caller is, asked once; pages that offer actions (jobs) await MLH.whoamiReady.
  async function whoami() {
    try {
      const me = await MLH.getJson("ui/whoami");
      MLH.$("whoami").textContent = me.name ? `${me.name} (${me.grants.join(", ")})` : "";
      MLH.$("nav-audit").hidden = !me.actions.includes("audit.read");
      return me;
    } catch (err) {
      MLH.status("Error: " + err.message);
      return { name: null, kind: null, grants: [], actions: [] };
    }
  }

  window.addEventListener("hashchange", MLH.render);
  MLH.whoamiReady = whoami();
  MLH.render();
})();
