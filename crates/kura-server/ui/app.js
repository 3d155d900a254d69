// kura's web UI: a client of the JSON API (/api/v1) with the session cookie. It renders
// what the API answers and sends what the user asks for; it decides nothing itself.

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let csrf = null;
let timer = null;

/// Which navigation is current: a page still loading when the user moved on must not draw
/// over the page that replaced it.
let generation = 0;
class Stale extends Error {}

/// One API request; throws the API's error ({code, message}) on failure. A read answered
/// after the user navigated elsewhere throws `Stale`, which ends the page that asked.
async function api(method, path, body) {
  const asked = generation;
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
  if (method === "GET" && asked !== generation) throw new Stale();
  if (!r.ok) {
    const e = new Error(v?.error?.message || `HTTP ${r.status}`);
    e.code = v?.error?.code;
    e.status = r.status;
    e.fields = v?.error?.fields || [];
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

/// A calendar day in the browser's zone, with the UTC instant on hover.
function day(t) {
  const d = new Date(t);
  return el("time", { datetime: t, title: d.toISOString() }, d.toLocaleDateString());
}

/// Logical over stored size; nothing to say while nothing is stored.
function ratio(u) {
  return u.stored_bytes ? `${u.ratio.toFixed(2)}×` : "—";
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
  // A wide table scrolls inside its box on a narrow screen; the page does not.
  return el("div", { class: "scroll" }, el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c)))))));
}

function show(...nodes) {
  main.replaceChildren(...nodes.flat(Infinity).filter((n) => n != null));
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

/// The API operations this session may call (`Session.operations`): a form for any other
/// is not offered.
let allowed = new Set();

async function started(session) {
  csrf = session.csrf;
  allowed = new Set(session.operations);
  document.getElementById("who").textContent = `signed in as ${session.token_name}`;
  nav.hidden = false;
  try {
    await loadVocabulary();
  } catch (e) {
    return show(problem(e));
  }
  route();
}

/// The API's status words, with what each means, read from its OpenAPI document: the UI
/// spells none of them itself. `vocabulary.JobStatus` is `[{value, description}]`.
const vocabulary = {};

async function loadVocabulary() {
  const doc = await fetch("/api/v1/openapi.json", { credentials: "same-origin" }).then((r) => r.json());
  for (const name of ["JobStatus", "JobOperation", "ProtectionState", "HealthStatus", "LastBackupStatus", "TaskStatus"]) {
    const schema = doc.components?.schemas?.[name];
    if (!schema?.oneOf) throw new Error(`the API document has no ${name} values`);
    vocabulary[name] = schema.oneOf.map((o) => ({ value: o.const, description: (o.description || "").replace(/\s+/g, " ") }));
  }
}

/// A status word, with its meaning on hover.
function word(kind, value, attrs = {}) {
  const d = vocabulary[kind]?.find((w) => w.value === value)?.description;
  return el("span", { title: d, ...attrs }, value);
}

document.getElementById("sign-out").addEventListener("click", async () => {
  try { await api("DELETE", "/session"); } catch (_) { /* the session may have ended */ }
  location.hash = "#/";
  signIn("Signed out.");
});

// ---- pages

/// Whether an item's next scheduled backup is overdue: its slot passed more than 15 minutes
/// ago (a running scheduler ticks well within that) with no tick handling it.
function overdue(i) {
  return i.next_backup && Date.now() - new Date(i.next_backup).getTime() > 15 * 60 * 1000;
}

async function dashboard() {
  const [jobs, items, usage, vaults] = await Promise.all([
    api("GET", `/jobs?limit=10000&since=${encodeURIComponent(new Date(Date.now() - 24 * 3600 * 1000).toISOString())}`),
    api("GET", "/items"), api("GET", "/usage"), api("GET", "/vaults"),
  ]);
  const trends = await Promise.all(vaults.map((v) => api("GET", `/vaults/${encodeURIComponent(v.name)}/trend`)));
  const count = (xs, f) => xs.reduce((m, x) => ((m[f(x)] = (m[f(x)] || 0) + 1), m), {});
  const byStatus = count(jobs, (j) => j.status);
  const byState = count(items, (i) => i.protection_state);
  const byHealth = count(items, (i) => i.health_status);
  const attention = items
    .map((i) => [i, [...i.health_details, ...(overdue(i) ? [`its backup due at ${new Date(i.next_backup).toLocaleString()} has not run: is the scheduler running?`] : [])]])
    .filter(([i, why]) => why.length || i.last_backup_status === "Unhealthy");
  // Every job status has a tile; item states and health only those some item is in.
  const tiles = (id, kind, counts, attr, href, all = false) => el("ul", { class: "counts", id }, vocabulary[kind].filter(({ value }) => all || counts[value]).map(({ value, description }) =>
    el("li", { [attr]: value, title: description }, href
      ? el("a", { href: href(value) }, el("span", { class: "n" }, counts[value] || 0), " ", value)
      : [el("span", { class: "n" }, counts[value] || 0), " ", value])));
  show(
    el("h1", {}, "Dashboard"),
    el("section", { class: "tiles", "aria-labelledby": "jobs-24h" },
      el("h2", { id: "jobs-24h" }, "Jobs, last 24 hours"),
      tiles("job-counts", "JobStatus", byStatus, "data-status", (s) => `#/jobs?status=${s}`, true)),
    el("section", { class: "tiles", "aria-labelledby": "items-title" },
      el("h2", { id: "items-title" }, "Protected items"),
      items.length ? [
        el("h3", {}, "By protection state"),
        tiles("item-counts", "ProtectionState", byState, "data-state", (s) => `#/items?state=${s}`),
        el("h3", {}, "By health"),
        tiles("health-counts", "HealthStatus", byHealth, "data-health", (s) => `#/items?health=${s}`),
      ] : el("p", { class: "empty" }, "No items yet: protect one with `kura item protect disk IMAGE --vault NAME`.")),
    el("section", { "aria-labelledby": "attention-title" },
      el("h2", { id: "attention-title" }, "Needs attention"),
      table(["Item", "Health", "Last backup", "Why"], attention.map(([i, why]) => [
        itemLink(i.name), word("HealthStatus", i.health_status), word("LastBackupStatus", i.last_backup_status), why.join("; "),
      ]), "Every item is healthy and on schedule.")),
    el("section", { "aria-labelledby": "vaults-title" },
      el("h2", { id: "vaults-title" }, "Vaults"),
      table(["Vault", "Items", "Protected", "Logical", "Stored", "Dedup", "Estimated full"], usage.map((u) => {
        const t = trends.find((x) => x.vault === u.vault);
        return [
          el("a", { href: `#/vaults/${encodeURIComponent(u.vault)}` }, u.vault), u.items.length,
          size(u.items.reduce((a, i) => a + i.protected_bytes, 0)), size(u.logical_bytes),
          u.unreachable ? el("span", { class: "error", title: u.unreachable }, `${size(u.stored_bytes)} (last known: storage unreachable)`) : size(u.stored_bytes),
          ratio(u), t?.estimated_full ? day(t.estimated_full) : "—",
        ];
      }), "No vaults yet: create one with `kura vault create NAME`."),
      el("div", { class: "charts" }, trends.map(trendChart))));
  return 5000;
}

// ---- charts (inline SVG; every chart has a text alternative)

const svgNS = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...children) {
  const e = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v != null) e.setAttribute(k, v);
  for (const c of children.flat()) if (c != null) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

/// A vault's stored size per day, the file system's size when known, and the growth line
/// continued to the day it would be full.
function trendChart(t) {
  const W = 560, H = 200, L = 64, R = 12, T = 14, B = 30;
  const pts = t.samples.map((s) => [new Date(s.at).getTime(), s.stored_bytes]);
  const DAY = 24 * 3600 * 1000;
  // The growth line is drawn to the full date when that is within a year; further out the
  // caption says it and the chart keeps to the measurements.
  const full = t.estimated_full && pts.length && new Date(t.estimated_full).getTime() - pts.at(-1)[0] < 365 * DAY
    ? new Date(t.estimated_full).getTime() : null;
  const cap = t.filesystem?.total_bytes;
  const caption = t.estimated_full
    ? `Vault ${t.vault}: ${size(pts.at(-1)?.[1])} stored, growing ${size(t.growth_bytes_per_day)} a day; the disk is full around ${new Date(t.estimated_full).toLocaleDateString()}.`
    : pts.length
      ? `Vault ${t.vault}: ${size(pts.at(-1)[1])} stored${t.growth_bytes_per_day != null ? `, ${t.growth_bytes_per_day > 0 ? "growing" : "changing"} ${size(Math.abs(t.growth_bytes_per_day))} a day` : ""}${cap ? ` on a ${size(cap)} file system with ${size(t.filesystem.available_bytes)} free` : ""}.`
      : `Vault ${t.vault}: no measurements yet (the first backup or garbage collection makes one).`;
  const fig = el("figure", { class: "chart" }, el("figcaption", {}, caption));
  if (!pts.length) return fig;
  const x0 = pts[0][0];
  const x1 = Math.max(full ?? 0, pts.at(-1)[0], x0 + 7 * DAY);
  const ymax = Math.max(full && cap ? cap : 0, ...pts.map((p) => p[1]), 1) * 1.05;
  const X = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const Y = (y) => T + (1 - y / ymax) * (H - T - B);
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": caption, class: "trend" },
    svg("line", { x1: L, x2: W - R, y1: Y(0), y2: Y(0), class: "axis" }),
    svg("text", { x: L - 6, y: Y(0), class: "tick", "text-anchor": "end" }, "0"),
    svg("text", { x: L - 6, y: Y(ymax / 1.05) + 4, class: "tick", "text-anchor": "end" }, size(ymax / 1.05)),
    svg("text", { x: L, y: H - 8, class: "tick" }, new Date(x0).toLocaleDateString()),
    svg("text", { x: W - R, y: H - 8, class: "tick", "text-anchor": "end" }, new Date(x1).toLocaleDateString()));
  if (cap && full) {
    g.append(svg("line", { x1: L, x2: W - R, y1: Y(cap), y2: Y(cap), class: "capacity" }),
      svg("text", { x: L + 4, y: Y(cap) - 4, class: "tick" }, `file system ${size(cap)}`));
  }
  g.append(svg("polyline", { points: pts.map(([x, y]) => `${X(x).toFixed(1)},${Y(y).toFixed(1)}`).join(" "), class: "stored" }));
  for (const [x, y] of pts) {
    g.append(svg("circle", { cx: X(x).toFixed(1), cy: Y(y).toFixed(1), r: 2.5, class: "stored" },
      svg("title", {}, `${new Date(x).toLocaleDateString()}: ${size(y)}`)));
  }
  if (full && cap) {
    const [lx, ly] = pts.at(-1);
    g.append(svg("line", { x1: X(lx), y1: Y(ly), x2: X(full), y2: Y(cap), class: "projection" }),
      svg("text", { x: X(full) - 4, y: Y(cap) + 14, class: "tick full", "text-anchor": "end" }, `full ${new Date(full).toLocaleDateString()}`));
  }
  fig.prepend(g);
  return fig;
}

/// Horizontal bars, two per row (protected and stored size), scaled to the largest value;
/// the 20 largest rows when there are more (the table lists them all).
function barChart(label, all) {
  const rows = [...all].sort((a, b) => b.protected - a.protected || b.stored - a.stored).slice(0, 20);
  if (rows.length < all.length) label = `${label} (the ${rows.length} largest of ${all.length})`;
  const W = 560, row = 34, L = 140, R = 90;
  const max = Math.max(1, ...rows.flatMap((r) => [r.protected, r.stored]));
  const g = svg("svg", { viewBox: `0 0 ${W} ${rows.length * row + 8}`, role: "img", class: "bars",
    "aria-label": `${label}: ${rows.map((r) => `${r.name} ${size(r.protected)} protected, ${size(r.stored)} stored`).join("; ")}` });
  rows.forEach((r, i) => {
    const y = 4 + i * row;
    const w = (v) => Math.max(1, (v / max) * (W - L - R));
    g.append(
      svg("text", { x: L - 8, y: y + 18, class: "tick", "text-anchor": "end" }, r.name.length > 18 ? `${r.name.slice(0, 17)}…` : r.name),
      svg("rect", { x: L, y, width: w(r.protected), height: 12, class: "protected" }, svg("title", {}, `${r.name}: ${size(r.protected)} protected`)),
      svg("text", { x: L + w(r.protected) + 4, y: y + 10, class: "tick" }, size(r.protected)),
      svg("rect", { x: L, y: y + 14, width: w(r.stored), height: 12, class: "stored" }, svg("title", {}, `${r.name}: ${size(r.stored)} stored`)),
      svg("text", { x: L + w(r.stored) + 4, y: y + 24, class: "tick" }, size(r.stored)));
  });
  return el("figure", { class: "chart" }, g,
    el("figcaption", { class: "legend" }, el("span", { class: "key protected" }, "■ protected"), " ", el("span", { class: "key stored" }, "■ stored")));
}

/// The usage report: per vault and per item, protected and stored size, with charts.
async function usagePage() {
  const usage = await api("GET", "/usage");
  const total = (f) => usage.reduce((a, u) => a + f(u), 0);
  const prot = (u) => u.items.reduce((a, i) => a + i.protected_bytes, 0);
  show(
    el("h1", {}, "Usage"),
    usage.length ? [
      facts([["Protected", size(total(prot))], ["Logical (all points)", size(total((u) => u.logical_bytes))],
        ["Stored", size(total((u) => u.stored_bytes))],
        ["Protected instances", total((u) => u.items.reduce((a, i) => a + i.protected_instances, 0))]]),
      el("section", { "aria-labelledby": "per-vault" }, el("h2", { id: "per-vault" }, "Per vault"),
        barChart("Per vault", usage.map((u) => ({ name: u.vault, protected: prot(u), stored: u.stored_bytes }))),
        table(["Vault", "Items", "Protected", "Logical", "Stored", "Dedup and compression"], usage.map((u) => [
          el("a", { href: `#/vaults/${encodeURIComponent(u.vault)}` }, u.vault), u.items.length, size(prot(u)),
          size(u.logical_bytes), size(u.stored_bytes), ratio(u),
        ]), "")),
      usage.map((u) => el("section", { "aria-labelledby": `items-of-${u.vault}` },
        el("h2", { id: `items-of-${u.vault}` }, `Items in ${u.vault}`),
        u.items.length ? barChart(`Items in ${u.vault}`, u.items.map((i) => ({ name: i.item, protected: i.protected_bytes, stored: i.stored_bytes }))) : null,
        table(["Item", "State", "Protected", "Instances", "Points", "Logical", "Stored", "Ratio"], u.items.map((i) => [
          itemLink(i.item), i.state, size(i.protected_bytes), `${i.protected_instances} (${i.instance_tier})`, i.recovery_points,
          size(i.logical_bytes), size(i.stored_bytes), ratio(i),
        ]), "No items in this vault."))),
    ] : el("p", { class: "empty" }, "No vaults yet: create one with `kura vault create NAME`."));
  return 0;
}

async function itemList(params) {
  const items = await api("GET", "/items");
  const q = (params.get("q") || "").toLowerCase();
  const filters = { kind: params.get("kind") || "", state: params.get("state") || "", health: params.get("health") || "" };
  const sort = params.get("sort") || "name";
  const desc = params.get("desc") === "1";
  const agent = el("span", { class: "muted" }, "—");
  const columns = [
    ["name", "Name", (i) => i.name], ["kind", "Kind", (i) => i.kind], ["vault", "Vault", (i) => i.vault],
    ["policy", "Policy", (i) => i.policy || ""], ["state", "State", (i) => i.protection_state],
    ["health", "Health", (i) => i.health_status], ["last", "Last backup", (i) => i.last_backup || ""],
    ["next", "Next backup", (i) => i.next_backup || "~"], ["points", "Points", (i) => i.recovery_points],
    ["agent", "Agent", () => ""],
  ];
  const key = (columns.find(([k]) => k === sort) || columns[0])[2];
  const shown = items
    .filter((i) => !q || [i.name, i.vault, i.kind, i.policy || ""].some((t) => t.toLowerCase().includes(q)))
    .filter((i) => (!filters.kind || i.kind === filters.kind) && (!filters.state || i.protection_state === filters.state)
      && (!filters.health || i.health_status === filters.health))
    .sort((a, b) => {
      const [x, y] = [key(a), key(b)];
      const c = typeof x === "number" ? x - y : String(x).localeCompare(String(y));
      return desc ? -c : c;
    });
  const link = (changes) => {
    const p = new URLSearchParams(params);
    for (const [k, v] of Object.entries(changes)) if (v === "" || v == null) p.delete(k); else p.set(k, v);
    return `#/items?${p}`;
  };
  const choice = (id, label, values, value) => [
    el("label", { for: id }, label),
    el("select", { id }, ["", ...values].map((s) => el("option", { value: s, selected: s === value }, s || "any")))];
  const filter = el("form", { class: "filters", role: "search", "aria-label": "Filter items" },
    el("label", { for: "item-filter" }, "Filter"),
    el("input", { id: "item-filter", type: "search", value: q, placeholder: "name, vault, kind or policy" }),
    choice("item-kind", "Kind", [...new Set(items.map((i) => i.kind))].sort(), filters.kind),
    choice("item-state", "State", vocabulary.ProtectionState.map((w) => w.value), filters.state),
    choice("item-health", "Health", vocabulary.HealthStatus.map((w) => w.value), filters.health),
    el("button", { type: "submit" }, "Apply"));
  filter.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = (id) => filter.querySelector(id).value;
    location.hash = link({ q: v("#item-filter"), kind: v("#item-kind"), state: v("#item-state"), health: v("#item-health") });
  });
  const head = columns.map(([k, label]) => k === "agent" ? label : el("a", {
    href: link({ sort: k, desc: k === sort && !desc ? "1" : "" }),
    title: `sort by ${label.toLowerCase()}`,
  }, label, k === sort ? (desc ? " ▼" : " ▲") : ""));
  // A VM's agent is asked live (GET /items/{item}); the list fills those cells as they answer.
  const agents = new Map(shown.filter((i) => i.kind === "vm").slice(0, 50).map((i) => [i.name, agent.cloneNode(true)]));
  show(
    el("h1", {}, "Items"),
    filter,
    items.length
      ? table(head, shown.map((i) => [
        itemLink(i.name), i.kind, i.vault, i.policy || "—", word("ProtectionState", i.protection_state),
        word("HealthStatus", i.health_status),
        i.last_backup ? [word("LastBackupStatus", i.last_backup_status), " ", when(i.last_backup)] : word("LastBackupStatus", i.last_backup_status),
        i.next_backup ? [when(i.next_backup), overdue(i) ? el("strong", { class: "bad" }, " overdue") : null] : "—",
        i.recovery_points, agents.get(i.name) || "",
      ]), "No item matches the filter.")
      : el("p", { class: "empty" }, "No items yet: protect one with `kura item protect disk IMAGE --vault NAME`."));
  for (const [name, cell] of agents) {
    api("GET", `/items/${encodeURIComponent(name)}`).then((i) => cell.replaceChildren(i.agent_status || "not configured"), () => {});
  }
  return 0;
}

/// A duration in seconds as a person reads it.
function duration(secs) {
  if (secs == null) return "—";
  if (secs < 60) return `${secs} s`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min ${secs % 60} s`;
  return `${Math.floor(secs / 3600)} h ${Math.floor((secs % 3600) / 60)} min`;
}

/// What a running job is doing now: its sub-task in progress.
function phase(j) {
  return j.tasks.find((t) => t.status === "InProgress")?.name || (RUNNING.includes(j.status) ? "" : "—");
}

async function jobList(params) {
  const status = params.get("status");
  const jobs = await api("GET", `/jobs?limit=200${status ? `&status=${encodeURIComponent(status)}` : ""}`);
  show(
    el("h1", {}, status ? `Jobs: ${status}` : "Jobs"),
    table(["Job", "Operation", "Target", "Status", "Phase", "Progress", "Rate", "ETA", "Started", "Ended", ""],
      jobs.map((j) => {
        const running = RUNNING.includes(j.status);
        return [
          jobLink(j), j.operation, j.target,
          word("JobStatus", j.status, { class: `status s-${j.status}` }), phase(j),
          j.bytes_total ? el("progress", { max: j.bytes_total, value: j.bytes_done, "aria-label": `progress of job ${j.id.slice(-8)}` }) : "",
          running && j.rate_bytes_per_sec ? `${size(j.rate_bytes_per_sec)}/s` : "",
          running && j.eta_seconds != null ? duration(j.eta_seconds) : "",
          when(j.started), when(j.ended),
          running && j.status !== "Cancelling"
            ? action("cancelJob", `Cancel job ${j.id.slice(-8)}`, [], () => api("POST", `/jobs/${j.id}/cancel`, {}), { confirm: "Cancel this job? It keeps nothing incomplete.", label: "Cancel" })
            : "",
        ];
      }),
      "No jobs yet: back up an item now, or give it a policy."));
  return jobs.some((j) => RUNNING.includes(j.status)) ? 1000 : 5000;
}

function itemLink(name) {
  return el("a", { href: `#/items/${encodeURIComponent(name)}` }, name);
}

const RUNNING = ["Queued", "InProgress", "Cancelling"];

function jobLink(j) {
  return el("a", { href: `#/jobs/${j.id}`, "aria-label": `job ${j.id.slice(-8)}` }, el("code", {}, j.id.slice(-8)));
}

function jobRows(jobs) {
  return jobs.map((j) => [
    jobLink(j), j.operation,
    word("JobStatus", j.status, { class: `status s-${j.status}` }),
    j.bytes_total ? el("progress", { max: j.bytes_total, value: j.bytes_done, "aria-label": `progress of job ${j.id.slice(-8)}` }) : "",
    when(j.started), when(j.ended), j.error || "",
  ]);
}

/// A form whose submit sends one API call (`op`, its OpenAPI operation id); its error is
/// shown next to it. Nothing when the session may not call `op`.
function action(op, label, fields, send, opts = {}) {
  if (!allowed.has(op)) return null;
  const err = el("p", { class: "error", role: "alert" });
  const form = el("form", { class: "action", "aria-label": label }, fields,
    el("button", { type: "submit", "aria-label": label }, opts.label || label), err);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (opts.confirm && !window.confirm(opts.confirm)) return;
    err.textContent = "";
    try {
      await send(new FormData(form));
      if (!opts.stay) route();
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
    actions.push(action("backupNow", "Back up now", [
      el("label", { for: "retain-until" }, "Keep until (optional)"),
      el("input", { id: "retain-until", name: "retain_until", type: "date" }),
    ], (f) => api("POST", `${path}/backups`, f.get("retain_until") ? { retain_until: f.get("retain_until") } : {})));
    const others = policies.filter((p) => p.name !== item.policy);
    if (others.length) {
      actions.push(action("setItemPolicy", "Change policy", [
        el("label", { for: "change-policy" }, "New policy"),
        el("select", { id: "change-policy", name: "policy" }, others.map((p) => el("option", { value: p.name }, p.name))),
      ], (f) => api("POST", `${path}/policy`, { policy: f.get("policy") })));
    }
    actions.push(action("stopProtection", "Stop protection, keep data", [], () => api("POST", `${path}/stop`, { delete_data: false })));
    actions.push(action("stopProtection", "Stop protection and delete data", [], () => api("POST", `${path}/stop`, { delete_data: true }),
      { confirm: `Delete the backup data of ${name}? Soft delete keeps it recoverable for its retention days.` }));
  }
  if (state === "SoftDeleted") {
    actions.push(action("undeleteItem", "Undelete", [], () => api("POST", `${path}/undelete`, {})));
  }
  if (state === "ProtectionStopped") {
    actions.push(action("resumeProtection", "Resume protection", [
      el("label", { for: "resume-policy" }, "Policy"),
      el("select", { id: "resume-policy", name: "policy" }, policies.map((p) => el("option", { value: p.name }, p.name))),
    ], (f) => api("POST", `${path}/resume`, { policy: f.get("policy") })));
  }
  show(
    el("h1", {}, `Item ${item.name}`),
    facts([["Kind", item.kind], ["Vault", el("a", { href: `#/vaults/${encodeURIComponent(item.vault)}` }, item.vault)],
      ["Policy", el("span", { id: "item-policy" }, item.policy || "—")],
      ["Protection", word("ProtectionState", state, { id: "protection-state" })],
      ["Last backup", [word("LastBackupStatus", item.last_backup_status), item.last_backup ? [" ", when(item.last_backup)] : null]],
      ["Next backup", item.next_backup ? [el("span", { id: "next-backup" }, when(item.next_backup)), overdue(item) ? el("strong", { class: "bad" }, " overdue") : null] : null],
      ["Health", [word("HealthStatus", item.health_status), item.health_details.length ? `: ${item.health_details.join("; ")}` : null]],
      ["Guest agent", item.agent_status ?? null], ["Source", item.source],
      ["Purged at", item.purge_at ? when(item.purge_at) : null]]),
    el("section", { class: "actions", "aria-label": "Actions" }, actions),
    el("section", { "aria-label": "Recovery points" },
      el("h2", {}, `Recovery points (${points.length})`),
      table(["Point", "Time", "Tier", "Consistency", "Size", "Stored", "Expires", "", ""], points.map((p) => [
        el("code", {}, p.id.slice(-8)), when(p.time), p.tier, p.consistency, size(p.logical_size), size(p.stored_size), when(p.expires),
        item.kind !== "files" && (item.kind === "vm" ? ["restoreDisks", "restoreVm"] : ["restoreDisk"]).some((op) => allowed.has(op))
          ? el("a", { href: `#/restore/${encodeURIComponent(name)}/${p.id}`, "aria-label": `Restore point ${p.id.slice(-8)}` }, "Restore…") : "",
        allowed.has("listFiles")
          ? el("a", { href: `#/files/${encodeURIComponent(name)}/${p.id}`, "aria-label": `Files of point ${p.id.slice(-8)}` }, "Files…") : "",
      ]), "No recovery points yet: back it up now.")),
    el("section", { "aria-label": "Jobs" },
      el("h2", {}, "Jobs"),
      table(["Job", "Operation", "Status", "Progress", "Started", "Ended", "Error"], jobRows(jobs), "No jobs yet.")));
  return jobs.some((j) => RUNNING.includes(j.status)) ? 1000 : 0;
}

/// `rwxr-x---` for permission bits.
function modeString(kind, mode) {
  const k = { dir: "d", symlink: "l", "block-device": "b", "char-device": "c", fifo: "p", socket: "s" }[kind] || "-";
  return k + [...Array(9)].map((_, i) => (mode & (1 << (8 - i)) ? "rwx"[i % 3] : "-")).join("");
}

/// File-level restore: browse a point's file system, download a file or a folder (tar or zip), or
/// restore chosen entries into a directory on the server.
async function filesPage(params, [name, rp]) {
  const path = params.get("path") || "/";
  const disk = params.get("disk") || "";
  const volume = params.get("volume") || "";
  const base = `/items/${encodeURIComponent(name)}/recovery-points/${encodeURIComponent(rp)}`;
  const point = await api("GET", base);
  const q = (extra) => {
    const p = new URLSearchParams({ ...(disk ? { disk } : {}), ...(volume ? { volume } : {}), ...extra });
    return p.toString();
  };
  const go = (changes) => {
    const p = new URLSearchParams(params);
    for (const [k, v] of Object.entries(changes)) if (v === "" || v == null) p.delete(k); else p.set(k, v);
    return `#/files/${encodeURIComponent(name)}/${encodeURIComponent(rp)}?${p}`;
  };
  const head = [el("h1", {}, `Files of ${name}`),
    facts([["Point", el("code", {}, point.rp_id)], ["Time", when(point.time)], ["Consistency", point.consistency]])];
  const pickers = [];
  // A file item's point is a tree: no disks, no volumes.
  const tree = point.disks.length === 0;
  if (point.disks.length > 1) {
    const sel = el("select", { id: "files-disk" }, [el("option", { value: "" }, "choose a disk"),
      ...point.disks.map((d) => el("option", { value: d.name, selected: d.name === disk }, `${d.name} (${size(d.size)})`))]);
    sel.addEventListener("change", () => { location.hash = go({ disk: sel.value, volume: "", path: "" }); });
    pickers.push(el("label", { for: "files-disk" }, "Disk"), sel);
    if (!disk) return show(head, el("div", { class: "filters" }, pickers), el("p", { class: "empty" }, "Choose the disk to browse.")), 0;
  }
  // A disk is browsed on one of its volumes: picked when it has several readable ones.
  if (!tree) {
    const vols = await api("GET", `${base}/volumes?${q({})}`);
    const readable = vols.volumes.filter((v) => v.readable);
    if (readable.length > 1 || volume) {
      const sel = el("select", { id: "files-volume" }, [el("option", { value: "" }, "choose a volume"),
        ...vols.volumes.map((v) => el("option", { value: v.number, selected: String(v.number) === volume, disabled: !v.readable },
          `${v.number}: ${v.fs}${v.name ? ` "${v.name}"` : ""} (${size(v.size)})${v.readable ? "" : ", not readable yet"}`))]);
      sel.addEventListener("change", () => { location.hash = go({ volume: sel.value, path: "" }); });
      pickers.push(el("label", { for: "files-volume" }, "Volume"), sel);
    }
    if (!readable.length) {
      return show(head, table(["Volume", "Table", "File system", "Size"], vols.volumes.map((v) => [v.number, v.table, v.fs, size(v.size)]), ""),
        el("p", { class: "empty" }, "No file system kura can read (ext2/3/4, XFS, FAT) on this disk: restore the whole disk instead.")), 0;
    }
    if (readable.length > 1 && !volume) {
      return show(head, el("div", { class: "filters" }, pickers), el("p", { class: "empty" }, "Choose the volume to browse.")), 0;
    }
  }
  const list = await api("GET", `${base}/files?${q({ path })}`);
  const crumbs = [el("a", { href: go({ path: "/" }) }, "/")];
  let acc = "";
  for (const part of path.split("/").filter(Boolean)) {
    acc += `/${part}`;
    crumbs.push(" ", el("a", { href: go({ path: acc }) }, part), " /");
  }
  const link = (e, archive) => el("a", {
    href: `/api/v1${base}/download?${q(archive ? { path: e.path, archive } : { path: e.path })}`, download: "",
    "aria-label": archive ? `Download .${archive} of ${e.name}` : `Download ${e.name}`,
  }, archive ? `.${archive}` : "Download");
  // A folder as tar (names as bytes, owners) or zip (what every desktop opens).
  const download = (e) => e.kind === "dir"
    ? el("span", {}, "Download ", link(e, "tar"), " ", link(e, "zip"))
    : link(e);
  const err = el("p", { class: "error", role: "alert", id: "files-error" });
  const rows = (list.entry.kind === "dir" ? list.entries : [list.entry]).map((e) => [
    el("input", { type: "checkbox", name: "pick", value: e.path, "aria-label": `Select ${e.name}` }),
    e.kind === "dir" ? el("a", { href: go({ path: e.path }) }, `${e.name}/`) : e.name,
    el("code", {}, modeString(e.kind, e.mode)), `${e.uid}:${e.gid}`, e.kind === "file" ? size(e.size) : "",
    when(e.modified), e.target ? `→ ${e.target}` : "",
    e.kind === "file" || e.kind === "dir" ? (allowed.has("downloadFiles") ? download(e) : "") : "",
  ]);
  const form = el("form", { class: "wizard", "aria-label": "Restore files" },
    el("div", { class: "scroll" }, table(["", "Name", "Mode", "Owner", "Size", "Modified", "Link", ""], rows, `${path} is empty.`)),
    allowed.has("restoreFiles") ? el("fieldset", {}, el("legend", {}, "Restore the selected entries to the server"),
      el("label", { for: "files-to" }, "Into the existing directory"),
      el("input", { id: "files-to", name: "to", placeholder: "/srv/restores" }),
      tree ? el("label", { class: "choice" }, el("input", { type: "checkbox", name: "original" }), " Or back where they were (the original location)") : null,
      el("label", { class: "choice" }, el("input", { type: "checkbox", name: "overwrite" }), " Replace files that exist (else they are skipped)"),
      err, el("button", { type: "submit" }, "Restore selected")) : null);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const paths = f.getAll("pick");
    if (!paths.length) { err.textContent = "Select at least one entry."; return; }
    const body = { rp: point.rp_id, paths, overwrite: f.get("overwrite") === "on" };
    if (f.get("original") === "on") body.original = true; else body.to = f.get("to");
    if (disk) body.disk = disk;
    if (volume) body.volume = Number(volume);
    try {
      const started = await api("POST", `/items/${encodeURIComponent(name)}/file-restores`, body);
      location.hash = `#/jobs/${started.job_id}`;
    } catch (e) {
      err.textContent = e.message;
    }
  });
  // The disk itself, served read-only over NBD for a while (qemu-img, nbdcopy, a VM).
  const exported = el("div", { id: "export-info", "aria-live": "polite" });
  const exportForm = action("startExport", "Export over NBD", [
    el("label", { for: "export-minutes" }, "For minutes"),
    el("input", { id: "export-minutes", name: "minutes", type: "number", min: 1, value: 60 }),
  ], async (f) => {
    const body = { rp: point.rp_id, minutes: Number(f.get("minutes")) };
    if (disk) body.disk = disk;
    const x = await api("POST", `/items/${encodeURIComponent(name)}/exports`, body);
    exported.replaceChildren(
      el("p", {}, "Serving read-only until ", when(x.expires), " at"),
      el("pre", { class: "log", id: "export-uri" }, x.uri),
      el("p", { class: "muted" }, `e.g. qemu-img convert -O qcow2 '${x.uri}' copy.qcow2 on the server's host`),
      action("stopExport", "End export", [], async () => {
        await api("DELETE", `/exports/${x.id}`);
        exported.replaceChildren(el("p", {}, "The export has ended."));
      }, { stay: true }));
  }, { stay: true });
  show(head, pickers.length ? el("div", { class: "filters" }, pickers) : null,
    el("nav", { class: "crumbs", "aria-label": "Path" }, crumbs),
    el("p", { class: "muted" }, `${tree ? `Tree ${list.disk}` : `Disk ${list.disk}, volume ${list.volume}`}; ${list.fetched.chunks} chunk(s) read from the vault for this listing.`),
    form,
    tree ? null : el("section", { "aria-labelledby": "export-title" }, el("h2", { id: "export-title" }, "The whole disk over NBD"),
      exportForm, exported));
  return 0;
}

/// The restore wizard's first steps: the item (`#/restore`), then its point
/// (`#/restore/ITEM`), newest first with tier and consistency.
async function restoreStart(_params, name) {
  if (!name) {
    const items = (await api("GET", "/items")).filter((i) => i.recovery_points > 0);
    return show(el("h1", {}, "Restore"),
      el("p", {}, "1. Choose the item to restore from."),
      table(["Item", "Kind", "Vault", "Points", "Newest"], items.map((i) => [
        el("a", { href: `#/restore/${encodeURIComponent(i.name)}`, "aria-label": `Restore from ${i.name}` }, i.name),
        i.kind, i.vault, i.recovery_points, when(i.latest_recovery_point?.time),
      ]), "No item has a recovery point yet: back one up first.")), 0;
  }
  const points = await api("GET", `/items/${encodeURIComponent(name)}/recovery-points`);
  show(el("h1", {}, `Restore ${name}`),
    el("p", {}, "1. Choose the recovery point."),
    table(["Time", "Tier", "Consistency", "Size", "Expires", ""], points.map((p) => [
      when(p.time), p.tier, p.consistency, size(p.logical_size), when(p.expires),
      el("a", { href: `#/restore/${encodeURIComponent(name)}/${p.id}`, "aria-label": `Restore point ${p.id.slice(-8)}` }, "Choose"),
    ]), "No recovery points: back the item up first."));
  return 0;
}

/// The restore wizard: the point, the mode its item's kind offers, the target and options,
/// a summary to confirm, then the job is followed.
async function restorePage(_params, [name, rp]) {
  const point = await api("GET", `/items/${encodeURIComponent(name)}/recovery-points/${encodeURIComponent(rp)}`);
  const vm = point.item.kind === "vm";
  // A geo vault's replica can serve the restore while its primary location is down.
  const geo = await api("GET", `/items/${encodeURIComponent(name)}`)
    .then((i) => api("GET", `/vaults/${encodeURIComponent(i.vault)}`))
    .then((v) => v.redundancy === "geo", () => false);
  const modes = vm
    ? [["disks", "Disks into a directory (one file per disk)"], ["new-vm", "A new VM (disks and a start script)"], ["replace", "Over the existing VM's disks"]]
    : [["disk", "The disk to an image file"]];
  const needs = { disk: "restoreDisk", disks: "restoreDisks", "new-vm": "restoreVm", replace: "restoreVm" };
  modes.splice(0, modes.length, ...modes.filter(([m]) => allowed.has(needs[m])));
  if (!modes.length) throw new Error("This session may not restore.");
  const err = el("p", { class: "error", role: "alert", id: "restore-error" });
  const summary = el("div", { id: "restore-summary", "aria-live": "polite" });
  const form = el("form", { class: "wizard", "aria-label": "Restore" },
    el("fieldset", {}, el("legend", {}, "1. Recovery point"),
      facts([["Item", name], ["Point", el("code", {}, point.rp_id)], ["Time", when(point.time)], ["Tier", point.tier],
        ["Consistency", point.consistency], ["Disks", point.disks.map((d) => `${d.name} (${size(d.size)})`).join(", ")]])),
    el("fieldset", {}, el("legend", {}, "2. What to restore"),
      modes.map(([v, label], i) => el("label", { class: "choice" },
        el("input", { type: "radio", name: "mode", value: v, checked: i === 0 }), " ", label))),
    el("fieldset", {}, el("legend", {}, "3. Target and options"),
      el("label", { for: "restore-to" }, vm ? "Target (directory, or the new VM's directory)" : "Target file on the server"),
      el("input", { id: "restore-to", name: "to", placeholder: "/srv/restores/web.qcow2" }),
      vm ? [el("label", { for: "restore-name" }, "New VM name"), el("input", { id: "restore-name", name: "as_new" })] : null,
      el("label", { for: "restore-format" }, "Image format"),
      el("select", { id: "restore-format", name: "format" },
        el("option", { value: "" }, "From the file name (.qcow2: qcow2, else raw)"),
        el("option", { value: "raw" }, "raw"), el("option", { value: "qcow2" }, "qcow2")),
      point.disks.length > 1 && !vm ? [el("label", { for: "restore-disk" }, "Disk"),
        el("select", { id: "restore-disk", name: "disk" }, point.disks.map((d) => el("option", { value: d.name }, d.name)))] : null,
      el("label", { class: "choice" }, el("input", { type: "checkbox", name: "force" }), " Replace an existing target"),
      geo ? el("label", { class: "choice" }, el("input", { type: "checkbox", name: "from_replica" }),
        " Read the point from the vault's geo replica (when its primary location is down)") : null),
    el("fieldset", {}, el("legend", {}, "4. Confirm"), summary, err,
      el("button", { type: "submit", id: "restore-review" }, "Review")));
  let reviewed = null;
  form.addEventListener("input", () => { reviewed = null; summary.replaceChildren(); form.querySelector("#restore-review").textContent = "Review"; });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    const f = new FormData(form);
    const mode = f.get("mode");
    const base = `/items/${encodeURIComponent(name)}`;
    let call;
    if (mode === "disk") {
      const body = { rp: point.rp_id, to: f.get("to"), force: f.get("force") === "on" };
      if (f.get("format")) body.format = f.get("format");
      if (f.get("disk")) body.disk = f.get("disk");
      call = [`${base}/restores`, body, `Restore ${name}'s disk from ${point.rp_id.slice(-8)} to ${body.to}${body.force ? ", replacing it" : ""}.`];
    } else if (mode === "disks") {
      const body = { rp: point.rp_id, to: f.get("to"), force: f.get("force") === "on" };
      if (f.get("format")) body.format = f.get("format");
      call = [`${base}/disk-restores`, body, `Restore every disk of ${name} from ${point.rp_id.slice(-8)} into ${body.to}.`];
    } else if (mode === "new-vm") {
      const body = { rp: point.rp_id, as_new: f.get("as_new"), to: f.get("to") };
      call = [`${base}/vm-restores`, body, `Make a new VM ${body.as_new} in ${body.to} from ${point.rp_id.slice(-8)}.`];
    } else {
      call = [`${base}/vm-restores`, { rp: point.rp_id, replace: true, stop: true },
        `Shut ${name} down and replace its disks with point ${point.rp_id.slice(-8)} (the old disks are kept beside them).`];
    }
    if (f.get("from_replica") === "on") {
      call[1].from_replica = true;
      call[2] += " The point is read from the vault's geo replica.";
    }
    if (reviewed !== JSON.stringify(call)) {
      reviewed = JSON.stringify(call);
      summary.replaceChildren(el("p", {}, call[2]));
      form.querySelector("#restore-review").textContent = "Restore";
      return;
    }
    try {
      const started = await api("POST", call[0], call[1]);
      location.hash = `#/jobs/${started.job_id}`;
    } catch (e) {
      err.textContent = e.message;
    }
  });
  show(el("h1", {}, `Restore ${name}`), form);
  return 0;
}

/// One job: its state, sub-tasks, log and report, followed while it runs; cancel.
async function jobPage(_params, id) {
  const j = await api("GET", `/jobs/${encodeURIComponent(id)}`);
  const running = RUNNING.includes(j.status);
  show(
    el("h1", {}, `Job ${j.id.slice(-8)}: ${j.operation} of ${j.target}`),
    facts([["Status", word("JobStatus", j.status, { id: "job-status", class: `status s-${j.status}` })],
      ["Phase", running ? phase(j) || null : null],
      ["Progress", j.bytes_total ? el("progress", { max: j.bytes_total, value: j.bytes_done, "aria-label": "progress" }) : null],
      ["Done", j.bytes_total ? `${size(j.bytes_done)} of ${size(j.bytes_total)}` : null],
      ["Rate", j.rate_bytes_per_sec ? `${size(j.rate_bytes_per_sec)}/s` : null],
      ["ETA", j.eta_seconds != null && running ? duration(j.eta_seconds) : null],
      ["Started", when(j.started)], ["Ended", j.ended ? when(j.ended) : null],
      ["Recovery point", j.rp_id], ["Error", j.error]]),
    running ? action("cancelJob", "Cancel job", [], () => api("POST", `/jobs/${j.id}/cancel`, {}), { confirm: "Cancel this job? It keeps nothing incomplete." }) : null,
    j.tasks.length ? el("section", { "aria-label": "Sub-tasks" }, el("h2", {}, "Sub-tasks"),
      table(["Task", "Status", "Detail"], j.tasks.map((t) => [t.name, word("TaskStatus", t.status), t.detail || ""]), "")) : null,
    el("section", { "aria-label": "Log" }, el("h2", {}, "Log"), el("pre", { class: "log" }, j.log.join("\n"))),
    j.result ? el("section", { "aria-label": "Report" }, el("h2", {}, "Report"),
      el("pre", { class: "log", id: "job-report" }, JSON.stringify(j.result, null, 2))) : null);
  return running ? 1000 : 0;
}

// ---- vaults

async function vaultList() {
  const [vaults, usage] = await Promise.all([api("GET", "/vaults"), api("GET", "/usage")]);
  const use = Object.fromEntries(usage.map((u) => [u.vault, u]));
  show(el("h1", {}, "Vaults"),
    table(["Vault", "Items", "Encryption", "Soft delete", "Logical", "Stored", "Dedup"], vaults.map((v) => [
      el("a", { href: `#/vaults/${encodeURIComponent(v.name)}` }, v.name), v.items, v.encryption,
      `${v.soft_delete} (${v.soft_delete_days} d)`, size(use[v.name]?.logical_bytes), size(use[v.name]?.stored_bytes),
      use[v.name] ? ratio(use[v.name]) : "—",
    ]), "No vaults yet: create one with `kura vault create NAME`."));
  return 0;
}

async function vaultPage(_params, name) {
  const path = `/vaults/${encodeURIComponent(name)}`;
  const [v, usage, items, jobs, trend] = await Promise.all([
    api("GET", path), api("GET", `/usage?vault=${encodeURIComponent(name)}`), api("GET", "/items"),
    api("GET", `/jobs?limit=20&item=${encodeURIComponent(name)}`), api("GET", `${path}/trend`),
  ]);
  const u = usage[0];
  const deleted = items.filter((i) => i.vault === name && i.protection_state === "SoftDeleted");
  const mine = await api("GET", `/jobs?limit=5&operation=Verify&item=${encodeURIComponent(`vault ${name}`)}`);
  show(
    el("h1", {}, `Vault ${name}`),
    facts([["Location", v.path],
      ["Redundancy", v.replica ? `${v.redundancy}, replica ${v.replica}` : v.redundancy],
      ...(v.replication ? [["Replication", v.replication.replicated_at
        ? `caught up ${when(v.replication.replicated_at)}; ${v.replication.points_behind} point(s), ${size(v.replication.bytes_behind)} behind`
        : "never caught up"]] : []),
      ["Encryption", v.cipher ? `${v.encryption} (${v.cipher})` : v.encryption],
      ["Chunk size", size(v.chunk_size)], ["Items", v.items],
      ["Soft delete", el("span", { id: "soft-delete" }, `${v.soft_delete}, ${v.soft_delete_days} days`)],
      ["Logical", size(u.logical_bytes)], ["Stored", size(u.stored_bytes)], ["Dedup and compression", ratio(u)],
      ["Recovery kit", v.kit_exported ? when(v.kit_exported) : el("strong", {}, `never exported: run kura vault key export ${name} --to FILE on the server's host`)]]),
    el("section", { class: "actions", "aria-label": "Actions" },
      action("updateVault", "Save soft delete", [
        el("label", { for: "sd-mode" }, "Soft delete"),
        el("select", { id: "sd-mode", name: "soft_delete" }, ["enabled", "disabled", "always-on"].map((m) => el("option", { value: m, selected: m === v.soft_delete }, m))),
        el("label", { for: "sd-days" }, "Days kept"),
        el("input", { id: "sd-days", name: "soft_delete_days", type: "number", value: v.soft_delete_days }),
      ], (f) => api("PATCH", path, { soft_delete: f.get("soft_delete"), soft_delete_days: Number(f.get("soft_delete_days")) })),
      action("verify", "Verify vault", [], async () => { const j = await api("POST", "/verify", { vault: name }); location.hash = `#/jobs/${j.job_id}`; }),
      action("collectGarbage", "Collect garbage", [], async () => { const j = await api("POST", `${path}/gc`, {}); location.hash = `#/jobs/${j.job_id}`; })),
    el("section", { "aria-label": "Storage trend" }, el("h2", {}, "Storage trend"), trendChart(trend)),
    el("section", { "aria-label": "Usage per item" }, el("h2", {}, "Usage per item"),
      table(["Item", "State", "Protected", "Instances", "Points", "Logical", "Stored"], u.items.map((i) => [
        itemLink(i.item), i.state, size(i.protected_bytes), `${i.protected_instances} (${i.instance_tier})`, i.recovery_points, size(i.logical_bytes), size(i.stored_bytes),
      ]), "No items in this vault.")),
    el("section", { "aria-label": "Soft-deleted items" }, el("h2", {}, "Soft-deleted items"),
      table(["Item", "Purged at", ""], deleted.map((i) => [
        itemLink(i.name), when(i.purge_at), action("undeleteItem", `Undelete ${i.name}`, [], () => api("POST", `/items/${encodeURIComponent(i.name)}/undelete`, {})),
      ]), "None.")),
    el("section", { "aria-label": "Last checks" }, el("h2", {}, "Verify and garbage collection"),
      table(["Job", "Operation", "Status", "Progress", "Started", "Ended", "Error"], jobRows([...mine, ...jobs.filter((j) => j.operation === "GarbageCollect")]), "Not verified or collected yet.")));
  return 0;
}

// ---- policies

const WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];
const MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august",
  "september", "october", "november", "december"];

async function policyList() {
  const vaults = await api("GET", "/vaults");
  const sections = await Promise.all(vaults.map(async (v) => {
    const ps = await api("GET", `/vaults/${encodeURIComponent(v.name)}/policies`);
    return el("section", { "aria-label": `Policies of ${v.name}` },
      el("h2", {}, `Vault ${v.name}`),
      allowed.has("createPolicy") ? el("p", {}, el("a", { href: `#/policies/${encodeURIComponent(v.name)}/new` }, `New policy in ${v.name}`)) : null,
      table(["Policy", "Frequency", "Time zone", "Items", "Updated"], ps.map((p) => [
        el("a", { href: `#/policies/${encodeURIComponent(v.name)}/${encodeURIComponent(p.name)}` }, p.name),
        p.doc.schedule.frequency, p.doc.schedule.time_zone || "UTC", p.items, when(p.updated),
      ]), "No policies."));
  }));
  show(el("h1", {}, "Policies"), vaults.length ? sections : el("p", { class: "empty" }, "No vaults yet: create one with `kura vault create NAME`."));
  return 0;
}

/// A labelled input whose API field path is `field`; its error shows beneath it.
function field(label, fieldPath, input) {
  const id = `f-${fieldPath.replace(/[^a-z0-9]+/gi, "-")}`;
  input.id = id;
  input.name = fieldPath;
  const err = el("span", { class: "field-error", id: `${id}-error`, "data-field": fieldPath, role: "alert" });
  input.setAttribute("aria-describedby", `${id}-error`);
  return el("div", { class: "field" }, el("label", { for: id }, label), input, err);
}

function num(value) {
  return el("input", { type: "number", min: 0, value: value ?? "" });
}

function pick(options, value) {
  return el("select", {}, options.map((o) => el("option", { value: o, selected: o === value }, o)));
}

/// The form's values as a policy document (empty tiers left out).
function policyDoc(f) {
  const n = (k) => (f.get(k) === "" || f.get(k) == null ? null : Number(f.get(k)));
  const doc = {
    name: f.get("name"),
    schedule: { frequency: f.get("schedule.frequency"), times: [f.get("schedule.times[0]")], time_zone: f.get("schedule.time_zone") },
    retention: {},
  };
  if (doc.schedule.frequency === "weekly") doc.schedule.days_of_week = [f.get("schedule.days_of_week")];
  if (n("instant_restore_days") != null) doc.instant_restore_days = n("instant_restore_days");
  if (n("retention.daily.days") != null) doc.retention.daily = { days: n("retention.daily.days") };
  if (n("retention.weekly.weeks") != null) doc.retention.weekly = { weeks: n("retention.weekly.weeks"), days_of_week: [f.get("retention.weekly.days_of_week")] };
  if (n("retention.monthly.months") != null) doc.retention.monthly = { months: n("retention.monthly.months"), days_of_month: [n("retention.monthly.days_of_month")] };
  if (n("retention.yearly.years") != null) {
    doc.retention.yearly = { years: n("retention.yearly.years"), months_of_year: [f.get("retention.yearly.months_of_year")], days_of_month: [n("retention.yearly.days_of_month")] };
  }
  return doc;
}

/// Puts each field error of an API answer next to its input (the nearest enclosing path
/// when the exact one has no input); the rest go to `general`.
function fieldErrors(form, e, general) {
  form.querySelectorAll(".field-error").forEach((x) => (x.textContent = ""));
  general.textContent = "";
  const rest = [];
  for (const { field: path, message } of e.fields || []) {
    let p = path;
    let target = null;
    while (p && !(target = form.querySelector(`.field-error[data-field="${CSS.escape(p)}"]`))) {
      p = p.includes("[") ? p.replace(/\[[^\]]*\]$/, "") : p.includes(".") ? p.replace(/\.[^.]*$/, "") : "";
    }
    if (target) target.textContent = message;
    else rest.push(`${path}: ${message}`);
  }
  if (!e.fields?.length) rest.push(e.message);
  general.textContent = rest.join("; ");
}

/// A month-by-month calendar of the simulated runs and a timeline of the points that
/// survive, coloured by their GFS tag.
function preview(sim) {
  const days = new Set(sim.runs.map((r) => r.time.slice(0, 10)));
  const first = new Date(sim.from.slice(0, 10) + "T00:00:00Z");
  const months = [];
  for (let m = 0; m < 2; m++) {
    const start = new Date(Date.UTC(first.getUTCFullYear(), first.getUTCMonth() + m, 1));
    const cells = [];
    for (let i = 0; i < (start.getUTCDay() + 6) % 7; i++) cells.push(el("span", { class: "day pad" }));
    for (let d = new Date(start); d.getUTCMonth() === start.getUTCMonth(); d.setUTCDate(d.getUTCDate() + 1)) {
      const key = d.toISOString().slice(0, 10);
      cells.push(el("span", { class: `day${days.has(key) ? " run" : ""}`, title: days.has(key) ? `backup on ${key}` : key }, d.getUTCDate()));
    }
    months.push(el("figure", { class: "month" },
      el("figcaption", {}, start.toLocaleString(undefined, { month: "long", year: "numeric", timeZone: "UTC" })),
      el("div", { class: "days" }, cells)));
  }
  const t0 = new Date(sim.from).getTime();
  const t1 = new Date(sim.until).getTime();
  const W = 720, H = 70;
  const colour = { daily: "#0a58ca", weekly: "#1a7f37", monthly: "#b35900", yearly: "#b3261e" };
  const tier = (tags) => ["yearly", "monthly", "weekly", "daily"].find((t) => tags.includes(t)) || "daily";
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${sim.surviving.length} recovery points survive until ${sim.until.slice(0, 10)}`);
  svg.setAttribute("class", "survivors");
  const line = document.createElementNS(svgNS, "line");
  Object.entries({ x1: 10, x2: W - 10, y1: H / 2, y2: H / 2, stroke: "#d0d7de" }).forEach(([k, v]) => line.setAttribute(k, v));
  svg.append(line);
  for (const p of sim.surviving) {
    const c = document.createElementNS(svgNS, "circle");
    const x = 10 + ((new Date(p.time).getTime() - t0) / (t1 - t0)) * (W - 20);
    const t = tier(p.tags);
    Object.entries({ cx: x.toFixed(1), cy: H / 2, r: t === "daily" ? 3 : 5, fill: colour[t] }).forEach(([k, v]) => c.setAttribute(k, v));
    const title = document.createElementNS(svgNS, "title");
    title.textContent = `${p.time.slice(0, 16)} ${p.tags.join(", ")}`;
    c.append(title);
    svg.append(c);
  }
  return el("section", { id: "policy-preview", "aria-label": "Preview" },
    el("h2", {}, "Preview"),
    el("p", {}, `${sim.runs.length} backups from ${sim.from.slice(0, 10)} until ${sim.until.slice(0, 10)} (${sim.time_zone}); ${sim.surviving.length} recovery points survive.`),
    el("div", { class: "months" }, months),
    svg,
    el("p", { class: "legend" }, Object.keys(colour).map((k) => el("span", { class: `tag-${k}` }, `● ${k} `))));
}

async function policyPage(_params, [vault, name]) {
  const fresh = name === "new";
  const p = fresh ? null : await api("GET", `/vaults/${encodeURIComponent(vault)}/policies/${encodeURIComponent(name)}`);
  const d = p?.doc || { schedule: { frequency: "daily", times: ["02:00"], time_zone: Intl.DateTimeFormat().resolvedOptions().timeZone }, retention: { daily: { days: 30 } } };
  const r = d.retention || {};
  const general = el("p", { class: "error", role: "alert", id: "policy-error" });
  const out = el("div", { id: "policy-preview-box" });
  const nameInput = el("input", { value: d.name || "", readonly: !fresh });
  const form = el("form", { class: "wizard", "aria-label": "Policy" },
    el("fieldset", {}, el("legend", {}, "Schedule"),
      field("Name", "name", nameInput),
      field("Frequency", "schedule.frequency", pick(["daily", "weekly"], d.schedule.frequency)),
      field("Time of day", "schedule.times[0]", el("input", { value: (d.schedule.times || ["02:00"])[0] })),
      field("Weekday (weekly)", "schedule.days_of_week", pick(WEEKDAYS, (d.schedule.days_of_week || ["sunday"])[0])),
      field("Time zone", "schedule.time_zone", el("input", { value: d.schedule.time_zone || "UTC" })),
      field("Instant restore days", "instant_restore_days", num(d.instant_restore_days))),
    el("fieldset", {}, el("legend", {}, "Retention (leave a tier empty to skip it)"),
      field("Daily: keep days", "retention.daily.days", num(r.daily?.days)),
      field("Weekly: keep weeks", "retention.weekly.weeks", num(r.weekly?.weeks)),
      field("Weekly: on", "retention.weekly.days_of_week", pick(WEEKDAYS, (r.weekly?.days_of_week || ["sunday"])[0])),
      field("Monthly: keep months", "retention.monthly.months", num(r.monthly?.months)),
      field("Monthly: day of month", "retention.monthly.days_of_month", num((r.monthly?.days_of_month || [1])[0])),
      field("Yearly: keep years", "retention.yearly.years", num(r.yearly?.years)),
      field("Yearly: month", "retention.yearly.months_of_year", pick(MONTHS, (r.yearly?.months_of_year || ["january"])[0])),
      field("Yearly: day of month", "retention.yearly.days_of_month", num((r.yearly?.days_of_month || [1])[0]))),
    general,
    el("div", { class: "buttons" },
      el("label", { for: "preview-from" }, "Preview from"),
      el("input", { id: "preview-from", type: "date", value: new Date().toISOString().slice(0, 10), "data-no-doc": true }),
      el("button", { type: "button", id: "policy-preview-button" }, "Preview"),
      allowed.has(fresh ? "createPolicy" : "updatePolicy") ? el("button", { type: "submit" }, fresh ? "Create policy" : "Save policy") : null));
  const base = `/vaults/${encodeURIComponent(vault)}/policies`;
  form.querySelector("#policy-preview-button").addEventListener("click", async () => {
    const from = form.querySelector("#preview-from").value;
    try {
      const sim = await api("POST", "/policy-simulations", { policy: policyDoc(new FormData(form)), from, days: 365 });
      fieldErrors(form, {}, general);
      general.textContent = "";
      out.replaceChildren(preview(sim));
    } catch (e) {
      out.replaceChildren();
      fieldErrors(form, e, general);
    }
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const doc = policyDoc(new FormData(form));
    try {
      if (fresh) await api("POST", base, doc);
      else await api("PUT", `${base}/${encodeURIComponent(name)}`, doc);
      location.hash = "#/policies";
    } catch (e) {
      fieldErrors(form, e, general);
    }
  });
  show(el("h1", {}, fresh ? `New policy in ${vault}` : `Policy ${vault}/${name}`), form, out);
  return 0;
}

function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.filter(([, v]) => v != null).map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

async function route() {
  clearTimeout(timer);
  generation++;
  if (!csrf) return;
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query || "");
  const pages = [
    [/^\/items\/([^/]+)$/, itemPage],
    [/^\/restore\/([^/]+)\/([^/]+)$/, restorePage],
    [/^\/restore(?:\/([^/]+))?$/, restoreStart],
    [/^\/files\/([^/]+)\/([^/]+)$/, filesPage],
    [/^\/jobs\/([^/]+)$/, jobPage],
    [/^\/policies\/([^/]+)\/([^/]+)$/, policyPage],
    [/^\/policies$/, policyList],
    [/^\/vaults\/([^/]+)$/, vaultPage],
    [/^\/vaults$/, vaultList],
    [/^\/items$/, itemList],
    [/^\/jobs$/, jobList],
    [/^\/usage$/, usagePage],
  ];
  let page = dashboard;
  let args = null;
  for (const [re, p] of pages) {
    const m = path.match(re);
    if (m) {
      page = p;
      const parts = m.slice(1).map((x) => (x === undefined ? undefined : decodeURIComponent(x)));
      args = parts.length === 1 ? parts[0] : parts;
      break;
    }
  }
  try {
    const again = await page(params, args);
    if (again) timer = setTimeout(route, again);
  } catch (e) {
    if (e instanceof Stale) return;
    if (e.status === 401) return signIn("Your session ended; sign in again.");
    show(problem(e));
  }
}

// After navigating, the focus goes to the new page's content (keyboard and screen-reader
// users start there); a page refreshing itself leaves the focus alone.
window.addEventListener("hashchange", async () => {
  await route();
  main.focus({ preventScroll: true });
});

// A page load with a live session goes straight in.
api("GET", "/session").then(started, () => signIn());
