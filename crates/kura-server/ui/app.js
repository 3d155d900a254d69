// kura's web UI: a client of the JSON API (/api/v1) with the session cookie. It renders
// what the API answers and sends what the user asks for; it decides nothing itself.

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let csrf = null;
let timer = null;

/// One API request; throws the API's error ({code, message}) on failure.
async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && csrf) headers["X-CSRF-Token"] = csrf;
  const r = await fetch(`/api/v1${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const v = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = new Error(v?.error?.message || `HTTP ${r.status}`);
    e.code = v?.error?.code;
    e.status = r.status;
    throw e;
  }
  return v;
}

/// An element with attributes and children (text or elements).
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== false && v != null) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c != null) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

/// An instant in the browser's time zone, with UTC on hover.
function when(t) {
  if (!t) return el("span", { class: "muted" }, "—");
  const d = new Date(t);
  return el("time", { datetime: t, title: d.toISOString() }, d.toLocaleString());
}

/// Sizes in binary units, one convention everywhere.
function size(n) {
  if (n == null) return "—";
  const u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${u[i]}`;
}

function table(headers, rows, empty) {
  if (!rows.length) return el("p", { class: "empty" }, empty);
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c))))));
}

function show(...nodes) {
  main.replaceChildren(...nodes);
}

function problem(e) {
  return el("p", { class: "error", role: "alert" }, e.message);
}

// ---- sign-in

function signIn(message) {
  nav.hidden = true;
  csrf = null;
  const input = el("input", { id: "token", name: "token", type: "password", autocomplete: "current-password", required: true });
  const err = el("p", { class: "error", role: "alert", id: "sign-in-error" }, message || "");
  const form = el("form", { class: "card sign-in", "aria-labelledby": "sign-in-title" },
    el("h1", { id: "sign-in-title" }, "Sign in to kura"),
    el("label", { for: "token" }, "API token"),
    input,
    el("p", { class: "muted" }, "A token from `kura token create NAME` on the server's host."),
    err,
    el("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const s = await api("POST", "/session", { token: input.value });
      started(s);
    } catch (e) {
      err.textContent = e.status === 401 ? "That token is not accepted (unknown, revoked or expired)." : e.message;
    }
  });
  show(form);
  input.focus();
}

function started(session) {
  csrf = session.csrf;
  document.getElementById("who").textContent = `signed in as ${session.token_name}`;
  nav.hidden = false;
  route();
}

document.getElementById("sign-out").addEventListener("click", async () => {
  try { await api("DELETE", "/session"); } catch (_) { /* the session may have ended */ }
  location.hash = "#/";
  signIn("Signed out.");
});

// ---- pages

const JOB_STATES = ["Completed", "CompletedWithWarnings", "Failed", "InProgress", "Queued", "Cancelled"];

async function dashboard() {
  const [jobs, items, usage] = await Promise.all([
    api("GET", "/jobs?limit=1000"), api("GET", "/items"), api("GET", "/usage"),
  ]);
  const since = Date.now() - 24 * 3600 * 1000;
  const recent = jobs.filter((j) => new Date(j.started).getTime() >= since);
  const count = (xs, f) => xs.reduce((m, x) => ((m[f(x)] = (m[f(x)] || 0) + 1), m), {});
  const byStatus = count(recent, (j) => (j.status === "Cancelling" ? "InProgress" : j.status));
  const byState = count(items, (i) => i.protection_state);
  const attention = items.filter((i) => i.health_status !== "Passed" || i.last_backup_status === "Unhealthy");
  show(
    el("h1", {}, "Dashboard"),
    el("section", { class: "tiles", "aria-label": "Jobs in the last 24 hours" },
      el("h2", {}, "Jobs, last 24 hours"),
      el("ul", { class: "counts", id: "job-counts" }, JOB_STATES.map((s) =>
        el("li", { "data-status": s }, el("a", { href: `#/jobs?status=${s}` },
          el("span", { class: "n" }, byStatus[s] || 0), " ", s))))),
    el("section", { class: "tiles", "aria-label": "Protected items" },
      el("h2", {}, "Protected items"),
      el("ul", { class: "counts", id: "item-counts" }, Object.entries(byState).map(([s, n]) =>
        el("li", { "data-state": s }, el("span", { class: "n" }, n), " ", s))),
      items.length ? null : el("p", { class: "empty" }, "No items yet: protect one with `kura item protect disk IMAGE --vault NAME`.")),
    el("section", { "aria-label": "Needs attention" },
      el("h2", {}, "Needs attention"),
      table(["Item", "Health", "Last backup", "Why"], attention.map((i) => [
        itemLink(i.name), i.health_status, i.last_backup_status, i.health_details.join("; "),
      ]), "Every item is healthy.")),
    el("section", { "aria-label": "Vaults" },
      el("h2", {}, "Vaults"),
      table(["Vault", "Items", "Protected", "Stored"], usage.map((u) => [
        u.vault, u.items.length, size(u.items.reduce((a, i) => a + i.protected_bytes, 0)), size(u.stored_bytes),
      ]), "No vaults yet: create one with `kura vault create NAME`.")));
  return 5000;
}

async function itemList() {
  const items = await api("GET", "/items");
  show(
    el("h1", {}, "Items"),
    table(["Name", "Kind", "Vault", "Policy", "State", "Health", "Last backup", "Points", "Latest point"],
      items.map((i) => [
        itemLink(i.name), i.kind, i.vault, i.policy || "—", i.protection_state, i.health_status, i.last_backup_status,
        i.recovery_points, when(i.latest_recovery_point?.time),
      ]),
      "No items yet: protect one with `kura item protect disk IMAGE --vault NAME`."));
  return 0;
}

async function jobList(params) {
  const status = params.get("status");
  const jobs = await api("GET", `/jobs?limit=200${status ? `&status=${encodeURIComponent(status)}` : ""}`);
  show(
    el("h1", {}, status ? `Jobs: ${status}` : "Jobs"),
    table(["Job", "Operation", "Target", "Status", "Progress", "Started", "Ended"],
      jobs.map((j) => [
        el("code", {}, j.id.slice(-8)), j.operation, j.target,
        el("span", { class: `status s-${j.status}` }, j.status),
        j.bytes_total ? el("progress", { max: j.bytes_total, value: j.bytes_done, "aria-label": `progress of job ${j.id.slice(-8)}` }) : "",
        when(j.started), when(j.ended),
      ]),
      "No jobs yet."));
  return jobs.some((j) => ["Queued", "InProgress", "Cancelling"].includes(j.status)) ? 1000 : 5000;
}

function itemLink(name) {
  return el("a", { href: `#/items/${encodeURIComponent(name)}` }, name);
}

const RUNNING = ["Queued", "InProgress", "Cancelling"];

function jobRows(jobs) {
  return jobs.map((j) => [
    el("code", {}, j.id.slice(-8)), j.operation,
    el("span", { class: `status s-${j.status}` }, j.status),
    j.bytes_total ? el("progress", { max: j.bytes_total, value: j.bytes_done, "aria-label": `progress of job ${j.id.slice(-8)}` }) : "",
    when(j.started), when(j.ended), j.error || "",
  ]);
}

/// A form whose submit sends one API call; its error is shown next to it.
function action(label, fields, send, opts = {}) {
  const err = el("p", { class: "error", role: "alert" });
  const form = el("form", { class: "action", "aria-label": label }, fields, el("button", { type: "submit" }, label), err);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (opts.confirm && !window.confirm(opts.confirm)) return;
    err.textContent = "";
    try {
      await send(new FormData(form));
      route();
    } catch (e) {
      err.textContent = e.message;
    }
  });
  return form;
}

async function itemPage(_params, name) {
  const path = `/items/${encodeURIComponent(name)}`;
  const [item, points, jobs] = await Promise.all([
    api("GET", path), api("GET", `${path}/recovery-points`),
    api("GET", `/jobs?limit=20&item=${encodeURIComponent(name)}`),
  ]);
  const policies = await api("GET", `/vaults/${encodeURIComponent(item.vault)}/policies`);
  const state = item.protection_state;
  const actions = [];
  if (state !== "SoftDeleted" && state !== "ProtectionStopped") {
    actions.push(action("Back up now", [
      el("label", { for: "retain-until" }, "Keep until (optional)"),
      el("input", { id: "retain-until", name: "retain_until", type: "date" }),
    ], (f) => api("POST", `${path}/backups`, f.get("retain_until") ? { retain_until: f.get("retain_until") } : {})));
    actions.push(action("Stop protection, keep data", [], () => api("POST", `${path}/stop`, { delete_data: false })));
    actions.push(action("Stop protection and delete data", [], () => api("POST", `${path}/stop`, { delete_data: true }),
      { confirm: `Delete the backup data of ${name}? Soft delete keeps it recoverable for its retention days.` }));
  }
  if (state === "SoftDeleted") {
    actions.push(action("Undelete", [], () => api("POST", `${path}/undelete`, {})));
  }
  if (state === "ProtectionStopped") {
    actions.push(action("Resume protection", [
      el("label", { for: "resume-policy" }, "Policy"),
      el("select", { id: "resume-policy", name: "policy" }, policies.map((p) => el("option", { value: p.name }, p.name))),
    ], (f) => api("POST", `${path}/resume`, { policy: f.get("policy") })));
  }
  show(
    el("h1", {}, `Item ${item.name}`),
    facts([["Kind", item.kind], ["Vault", item.vault], ["Policy", item.policy || "—"],
      ["Protection", el("span", { id: "protection-state" }, state)],
      ["Last backup", item.last_backup_status], ["Health", item.health_status], ["Source", item.source],
      ["Purged at", item.purge_at ? when(item.purge_at) : null]]),
    el("section", { class: "actions", "aria-label": "Actions" }, actions),
    el("section", { "aria-label": "Recovery points" },
      el("h2", {}, `Recovery points (${points.length})`),
      table(["Point", "Time", "Tier", "Consistency", "Size", "Stored", "Expires"], points.map((p) => [
        el("code", {}, p.id.slice(-8)), when(p.time), p.tier, p.consistency, size(p.logical_size), size(p.stored_size), when(p.expires),
      ]), "No recovery points yet: back it up now.")),
    el("section", { "aria-label": "Jobs" },
      el("h2", {}, "Jobs"),
      table(["Job", "Operation", "Status", "Progress", "Started", "Ended", "Error"], jobRows(jobs), "No jobs yet.")));
  return jobs.some((j) => RUNNING.includes(j.status)) ? 1000 : 0;
}

function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.filter(([, v]) => v != null).map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

async function route() {
  clearTimeout(timer);
  if (!csrf) return;
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query || "");
  const item = path.match(/^\/items\/(.+)$/);
  const page = item ? itemPage : path === "/items" ? itemList : path === "/jobs" ? jobList : dashboard;
  try {
    const again = await page(params, item ? decodeURIComponent(item[1]) : null);
    if (again) timer = setTimeout(route, again);
  } catch (e) {
    if (e.status === 401) return signIn("Your session ended; sign in again.");
    show(problem(e));
  }
}

window.addEventListener("hashchange", route);

// A page load with a live session goes straight in.
api("GET", "/session").then(started, () => signIn());
