// Shared by every page of the dashboard: building elements, tables, reading the JSON API.
// Everything that comes from data is put in the page as text (textContent), never as HTML, so
// a model description or a tag cannot inject markup or script.
"use strict";

const MLH = { pages: {}, timers: [] };

MLH.$ = (id) => document.getElementById(id);

MLH.text = (value) => (value === null || value === undefined ? "" : String(value));

// h("a", {href: "#/x", className: "y", dataset: {k: "v"}}, "text", node, ...)
MLH.h = (tag, attrs, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "className") node.className = value;
    else node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(MLH.text(child)));
  }
  return node;
};

// A link to a hash route; the parts are encoded, so a name can never leave the route.
MLH.link = (label, ...parts) =>
  MLH.h("a", { href: "#/" + parts.map((p) => encodeURIComponent(String(p))).join("/") }, label);

MLH.table = (headers, rows, attrs) => {
  const head = MLH.h("thead", {}, MLH.h("tr", {}, ...headers.map((t) => MLH.h("th", {}, t))));
  const body = MLH.h("tbody", {});
  for (const row of rows) {
    const tr = MLH.h("tr", row.attrs || {});
    for (const cell of row.cells || row) {
      // A cell is a value, a node, or {value, className?, title?} ("clip" cells are cut with
      // an ellipsis; their title keeps the whole text).
      if (cell && typeof cell === "object" && !(cell instanceof Node) && "value" in cell) {
        tr.appendChild(MLH.h("td", { className: cell.className, title: cell.title }, cell.value));
      } else {
        tr.appendChild(MLH.h("td", {}, cell));
      }
    }
    body.appendChild(tr);
  }
  // The box scrolls sideways if the table still cannot fit: the page itself never does.
  return MLH.h("div", { className: "table-box" }, MLH.h("table", attrs || {}, head, body));
};

// A long text cut to one line with an ellipsis; hovering shows all of it.
MLH.clip = (text) => ({ value: MLH.text(text), className: "clip", title: MLH.text(text) });

// Aliases as "champion → 1" chips (an alias names a version, never a number to format).
MLH.aliases = (object) => {
  const entries = Object.entries(object || {});
  if (!entries.length) return "";
  const box = MLH.h("span", {});
  for (const [alias, version] of entries) {
    box.appendChild(MLH.h("span", { className: "alias" }, `${alias} → ${version}`));
  }
  return box;
};

// Bytes as KiB/MiB/GiB with one decimal.
MLH.bytes = (value) => {
  if (value === null || value === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(value);
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
};

MLH.fill = (id, ...nodes) => {
  const box = MLH.$(id);
  box.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined));
  return box;
};

MLH.empty = (message) => MLH.h("p", { className: "muted" }, message);

MLH.number = (value, digits) =>
  value === null || value === undefined ? "—" : Number(value).toFixed(digits === undefined ? 3 : digits);

MLH.percent = (value) =>
  value === null || value === undefined ? "—" : (100 * value).toFixed(1) + "%";

MLH.when = (iso) => (iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "Z") : "");

MLH.pairs = (object) =>
  Object.entries(object || {}).map(([k, v]) => `${k}=${typeof v === "number" ? MLH.number(v, 4) : v}`).join(", ");

MLH.getJson = async (path) => {
  const headers = {};
  const key = sessionStorage.getItem("mlharbor.key");
  if (key) headers["Authorization"] = "Bearer " + key;
  const answer = await fetch(path, { headers });
  if (answer.status === 401 && !key) {  // the session expired or was revoked
    window.location.assign("ui/login");
    throw new Error("Please log in again.");
  }
  const body = await answer.json();
  if (!answer.ok) {
    const error = new Error((body.error && body.error.message) || answer.statusText);
    error.status = answer.status;
    throw error;
  }
  return body;
};

// A person's decision posted with the session (only the routes the server lists in
// COOKIE_POSTS take it: same origin, and this header, which no other site can send).
MLH.postJson = async (path, body) => {
  const headers = { "Content-Type": "application/json", "X-Mlharbor-Dashboard": "1" };
  const key = sessionStorage.getItem("mlharbor.key");
  if (key) headers["Authorization"] = "Bearer " + key;
  const answer = await fetch(path, { method: "POST", headers, body: JSON.stringify(body),
    credentials: "same-origin" });
  const reply = await answer.json();
  if (!answer.ok) {
    const error = new Error((reply.error && reply.error.message) || answer.statusText);
    error.status = answer.status;
    throw error;
  }
  return reply;
};

MLH.status = (message) => { MLH.$("status").textContent = message; };

// Run fn every `seconds` while the current page stays open (the router clears the timers).
MLH.every = (seconds, fn) => { MLH.timers.push(window.setInterval(fn, seconds * 1000)); };
