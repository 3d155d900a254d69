// Journeys through kura's web UI in a real browser: Playwright (playwright-core) driving
// Debian's chromium, against a real `kura server` over a home the test fills with the CLI.
// Run by scripts/test (`KURA_BIN=... node --test tests/ui/`).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, rmSync, existsSync, openSync, writeSync, closeSync, truncateSync, renameSync } from "node:fs";
import { createHash, randomBytes } from "node:crypto";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const KURA = process.env.KURA_BIN;
const CHROMIUM = process.env.KURA_CHROMIUM || "/usr/bin/chromium";
const TOKEN = "tok-ui-0123456789abcdef";
assert.ok(KURA, "set KURA_BIN to the kura binary");

const dir = mkdtempSync(join(tmpdir(), "kura-ui-"));
const home = join(dir, "home");
const servers = [];
let base;
let browser;

// KURA_UI_SCREENSHOTS=DIR saves a picture of each main page there (docs/ui is made so).
async function shot(page, name) {
  const to = process.env.KURA_UI_SCREENSHOTS;
  if (to) await page.screenshot({ path: join(to, `${name}.png`), fullPage: true });
}

function kura(...args) {
  return kuraIn(home, {}, ...args);
}

function kuraIn(h, env, ...args) {
  return execFileSync(KURA, ["--home", h, ...args], {
    env: { ...process.env, KURA_PASSPHRASE: "", ...env },
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
}

/// `kura` with its clock `days` whole days back (the test-hooks build's KURA_TEST_CLOCK):
/// history for the storage trend, on distinct days whenever the test runs.
function kuraDaysAgo(days, ...args) {
  const real = Math.floor(Date.now() / 1000);
  const at = new Date((real - days * 86400) * 1000).toISOString();
  return kuraIn(home, { KURA_TEST_CLOCK: `${at}@${real}` }, ...args);
}

function image(name, bytes) {
  const p = join(dir, name);
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i += 4096) b[i] = (i / 4096) % 251;
  writeFileSync(p, b);
  return p;
}

/// Overwrites `bytes` of an image at `offset` with new random data (a day's changes).
function change(p, offset, bytes) {
  const fd = openSync(p, "r+");
  writeSync(fd, randomBytes(bytes), 0, bytes, offset);
  closeSync(fd);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/// Starts `kura server` over `h` (extra environment: test gates); resolves to its base URL.
async function startServer(h, env = {}) {
  const child = spawn(KURA, ["--home", h, "server", "--listen", "127.0.0.1:0", "--no-scheduler",
    "--allow-restore", dir], {
    env: { ...process.env, KURA_ADMIN_TOKEN: TOKEN, ...env },
    stdio: ["ignore", "pipe", "ignore"],
  });
  servers.push(child);
  const first = await new Promise((resolve) => createInterface({ input: child.stdout }).once("line", resolve));
  return first.split(/\s+/).find((w) => w.startsWith("http://")).replace(/\/api\/v1$/, "");
}

async function signIn(page, at = base) {
  await page.goto(at + "/");
  await page.getByLabel("API token").fill(TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Dashboard" }).waitFor();
}

function get(path, at = base) {
  return fetch(at + path, { headers: { Authorization: `Bearer ${TOKEN}` } }).then((r) => r.json());
}

const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

/// axe-core's WCAG 2.1 A and AA rules on the page as it is: no violation allowed.
async function accessible(page, what) {
  // Evaluated through the browser's debugging protocol: the page's own policy (no inline
  // scripts) stays as it is.
  if (!(await page.evaluate(() => "axe" in window))) await page.evaluate(axeSource);
  const found = await page.evaluate(() => window.axe.run(document, {
    runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] },
  }).then((r) => r.violations.map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`)));
  assert.deepEqual(found, [], `${what}: accessibility violations`);
}

before(async () => {
  kura("vault", "create", "v", "--no-encryption", "--chunk-size", "64KiB");
  // Three days of history for "good" (each day changes 256 KiB of it), then today's backup.
  const good = image("good.raw", 1 << 20);
  kuraDaysAgo(3, "item", "protect", "disk", good, "--vault", "v");
  for (const days of [3, 2, 1]) {
    change(good, (3 - days) * (256 << 10), 256 << 10);
    kuraDaysAgo(days, "backup", "now", "good");
  }
  change(good, 768 << 10, 256 << 10);
  kura("backup", "now", "good");
  const gone = image("gone.raw", 1 << 20);
  kura("item", "protect", "disk", gone, "--vault", "v");
  rmSync(gone);
  assert.throws(() => kura("backup", "now", "gone"), "a backup of a missing image fails");
  const weekly = join(dir, "weekly.json");
  writeFileSync(weekly, JSON.stringify({ name: "weekly",
    schedule: { frequency: "weekly", days_of_week: ["saturday"], times: ["22:00"], time_zone: "UTC" },
    retention: { weekly: { weeks: 12, days_of_week: ["saturday"] } } }));
  kura("policy", "create", "--vault", "v", "--file", weekly);
  base = await startServer(home);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  for (const s of servers) s.kill();
  rmSync(dir, { recursive: true, force: true });
});

test("sign in, see the dashboard's jobs and items, sign out and be refused", async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  await page.goto(base + "/");
  await page.getByLabel("API token").waitFor();
  await accessible(page, "sign-in");
  await shot(page, "sign-in");
  await page.getByLabel("API token").fill("kura_not_a_token");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByText("That token is not accepted").waitFor();

  await page.getByLabel("API token").fill(TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Dashboard" }).waitFor();
  // The counts are the API's jobs of the last 24 hours (jobs are stamped with the real
  // clock): two protections and four backups completed, the backup of gone failed.
  const all = await get("/api/v1/jobs");
  const day = all.filter((j) => new Date(j.started).getTime() > Date.now() - 24 * 3600 * 1000);
  const completed = day.filter((j) => j.status === "Completed").length;
  assert.equal(completed, 6, JSON.stringify(day.map((j) => [j.operation, j.status, j.started])));
  const jobs = page.locator("#job-counts");
  assert.equal(await jobs.locator('[data-status="Completed"] .n').textContent(), String(completed));
  assert.equal(await jobs.locator('[data-status="Failed"] .n').textContent(), "1");
  // Every status word the API defines has a tile, read from its OpenAPI document.
  const doc = await (await fetch(base + "/api/v1/openapi.json")).json();
  const statuses = doc.components.schemas.JobStatus.oneOf.map((o) => o.const);
  assert.deepEqual(await jobs.locator("li").evaluateAll((li) => li.map((x) => x.dataset.status)), statuses);
  assert.equal(await page.locator('#health-counts [data-health="ActionRequired"] .n').textContent(), "1");
  // The failed item needs attention; the session survives a reload (HttpOnly cookie).
  await page.getByRole("cell", { name: "gone", exact: true }).waitFor();
  // Vault v's trend: one measurement a day for four days, growing, so a full date exists.
  const trend = await get("/api/v1/vaults/v/trend");
  assert.equal(trend.samples.length, 4, JSON.stringify(trend));
  const chart = page.getByRole("img", { name: /^Vault v: / });
  assert.equal(await chart.locator("circle").count(), 4);
  assert.match(await chart.getAttribute("aria-label"), /growing .* a day; the disk is full around /);
  assert.ok(trend.estimated_full, JSON.stringify(trend));
  await page.locator("main table").last().locator("time").first().waitFor();
  await accessible(page, "dashboard");
  await shot(page, "dashboard");
  await page.reload();
  await page.getByRole("heading", { name: "Dashboard" }).waitFor();

  await page.getByRole("link", { name: "Items" }).click();
  await page.getByRole("heading", { name: "Items" }).waitFor();
  for (const name of ["good", "gone"]) {
    await page.getByRole("cell", { name, exact: true }).waitFor();
  }
  await accessible(page, "items");
  await shot(page, "items");
  // Filter and sort, kept in the address (a link to a filtered list works).
  await page.getByLabel("Filter", { exact: true }).fill("gon");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.waitForURL(/q=gon/);
  const rows = page.locator("main tbody tr");
  await page.waitForFunction(() => document.querySelectorAll("main tbody tr").length === 1);
  assert.equal(await rows.first().locator("td").first().textContent(), "gone");
  await page.getByLabel("Filter", { exact: true }).fill("");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.waitForFunction(() => document.querySelectorAll("main tbody tr").length === 2);
  assert.equal(await rows.first().locator("td").first().textContent(), "gone", "by name, ascending");
  await page.getByRole("link", { name: "Name ▲" }).click();
  await page.getByRole("link", { name: "Name ▼" }).waitFor();
  assert.equal(await rows.first().locator("td").first().textContent(), "good", "by name, descending");
  // A status tile drills down to that status's jobs.
  await page.getByRole("link", { name: "Dashboard" }).click();
  await page.getByRole("link", { name: /1 Failed/ }).click();
  await page.getByRole("heading", { name: "Jobs: Failed" }).waitFor();
  assert.equal(await page.locator("tbody tr").count(), 1);
  await page.getByRole("link", { name: "Jobs", exact: true }).click();
  // exact: "Jobs: Failed" is still on the screen until the full list replaces it.
  await page.getByRole("heading", { name: "Jobs", exact: true }).waitFor();
  assert.ok((await page.locator("tbody tr").count()) >= 2);
  await accessible(page, "jobs");

  // The usage report: protected and stored size per vault and per item, drawn and listed.
  await page.getByRole("link", { name: "Usage" }).click();
  await page.getByRole("heading", { name: "Usage" }).waitFor();
  const usage = await get("/api/v1/usage");
  const v = usage.find((u) => u.vault === "v");
  const bars = page.getByRole("img", { name: /^Items in v: / });
  assert.equal(await bars.locator("rect.protected").count(), v.items.length);
  const good = v.items.find((i) => i.item === "good");
  assert.equal(good.protected_bytes, 1 << 20, JSON.stringify(good));
  assert.match(await bars.getAttribute("aria-label"), /good 1\.0 MiB protected, /);
  await accessible(page, "usage");
  await shot(page, "usage");
  await page.getByRole("link", { name: "Policies" }).click();
  await page.getByRole("heading", { name: "Policies" }).waitFor();
  await page.getByRole("link", { name: "weekly" }).waitFor();
  await accessible(page, "policies");
  await shot(page, "policies");

  const cookies = await page.context().cookies();
  const session = cookies.find((c) => c.name === "kura_session");
  assert.ok(session && session.httpOnly && session.sameSite === "Strict", JSON.stringify(cookies));
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("heading", { name: "Sign in to kura" }).waitFor();
  const r = await page.request.get(base + "/api/v1/items", {
    headers: { Cookie: `kura_session=${session.value}` },
  });
  assert.equal(r.status(), 401, "the old session is refused");
  await page.close();
});

test("back up an item now and watch the job complete; stop with delete, undelete, resume", async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  await page.goto(base + "/");
  await page.getByLabel("API token").fill(TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("link", { name: "Items" }).click();
  await page.getByRole("link", { name: "good", exact: true }).click();
  await page.getByRole("heading", { name: "Item good" }).waitFor();
  await page.getByRole("heading", { name: "Recovery points (4)" }).waitFor();
  await accessible(page, "item");

  // The job appears and reaches Completed with no reload: the page follows it.
  const loads = [];
  page.on("load", () => loads.push(1));
  await page.getByRole("button", { name: "Back up now" }).click();
  await page.getByRole("heading", { name: "Recovery points (5)" }).waitFor({ timeout: 30000 });
  const newest = page.locator("section[aria-label=Jobs] tbody tr").first();
  assert.equal(await newest.locator("td").nth(1).textContent(), "Backup");
  // The point is in the catalog a moment before its job is marked done: the page shows
  // that too as it follows the job.
  await newest.locator(".status").getByText("Completed", { exact: true }).waitFor({ timeout: 30000 });
  assert.equal(loads.length, 0, "no page load");
  await shot(page, "item");

  // A bad date is refused with the API's message next to the form, and nothing starts.
  await page.getByLabel("Keep until (optional)").fill("2001-01-01");
  await page.getByRole("button", { name: "Back up now" }).click();
  await page.locator("form[aria-label='Back up now'] .error").getByText(/in the past/).waitFor();

  // Stop and delete data (confirmed), then undelete, then resume with a policy.
  page.once("dialog", (d) => d.accept());
  await page.getByRole("button", { name: "Stop protection and delete data" }).click();
  await page.locator("#protection-state").getByText("SoftDeleted", { exact: true }).waitFor();
  await page.getByRole("button", { name: "Undelete" }).click();
  await page.locator("#protection-state").getByText("ProtectionStopped", { exact: true }).waitFor();
  await page.getByLabel("Policy").selectOption("DefaultPolicy");
  await page.getByRole("button", { name: "Resume protection" }).click();
  await page.locator("#protection-state").getByText("Protected", { exact: true }).waitFor();
  const item = await (await fetch(base + "/api/v1/items/good", { headers: { Authorization: `Bearer ${TOKEN}` } })).json();
  assert.equal(item.protection_state, "Protected");
  assert.equal(item.recovery_points, 5, "undelete kept the points");
  await page.close();
});

test("restore a recovery point through the wizard and get the image back", async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  await page.goto(base + "/");
  await page.getByLabel("API token").fill(TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Dashboard" }).waitFor();
  // The wizard from the start: the item, then its newest point.
  await page.getByRole("link", { name: "Restore", exact: true }).click();
  await page.getByRole("link", { name: "Restore from good" }).click();
  await page.getByRole("heading", { name: "Restore good" }).waitFor();
  const newest = (await get("/api/v1/items/good/recovery-points"))[0];
  assert.equal(await page.locator("main tbody tr").count(), 5);
  await page.getByRole("link", { name: `Restore point ${newest.id.slice(-8)}` }).click();
  await page.locator("legend", { hasText: "2. What to restore" }).waitFor();
  const target = join(dir, "restored.raw");
  await page.getByLabel("Target file on the server").fill(target);
  await page.getByRole("button", { name: "Review" }).click();
  await page.locator("#restore-summary").getByText(`to ${target}`).waitFor();
  await accessible(page, "restore wizard");
  await shot(page, "restore");
  await page.getByRole("button", { name: "Restore" }).click();
  await page.getByRole("heading", { name: /^Job .*: Restore of good$/ }).waitFor();
  await page.locator("#job-status").getByText("Completed", { exact: true }).waitFor({ timeout: 30000 });
  await page.locator("#job-report").waitFor();
  await accessible(page, "job");
  await shot(page, "job");
  const sha = (p) => createHash("sha256").update(readFileSync(p)).digest("hex");
  assert.equal(sha(target), sha(join(dir, "good.raw")), "the restored image is the source");

  // On a phone-width screen the pages fit: nothing makes the page scroll sideways.
  await page.setViewportSize({ width: 390, height: 800 });
  for (const hash of ["#/", "#/items", "#/items/good", "#/jobs", "#/usage", "#/vaults/v", "#/policies", "#/restore"]) {
    await page.goto(base + "/" + hash);
    await page.locator("main h1").waitFor();
    const [scroll, inner] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
    assert.ok(scroll <= inner, `${hash}: ${scroll} px wide in a ${inner} px window`);
  }
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.goto(base + `/#/restore/good/${encodeURIComponent((await (await fetch(base + "/api/v1/items/good/recovery-points", { headers: { Authorization: `Bearer ${TOKEN}` } })).json())[0].id)}`);

  // Again onto the same file without "replace": the server refuses, the message is shown.
  await page.getByRole("heading", { name: "Restore good" }).waitFor();
  await page.getByLabel("Target file on the server").fill(target);
  await page.getByRole("button", { name: "Review" }).click();
  await page.getByRole("button", { name: "Restore" }).click();
  await page.locator("#restore-error").getByText(/already exists/).waitFor();
  await page.close();
});

test("create a policy: a bad field gets its message beside it, the fix previews and saves", async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(base + "/");
  await page.getByLabel("API token").fill(TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("link", { name: "Policies" }).click();
  await page.getByRole("link", { name: "New policy in v" }).click();
  await page.getByRole("heading", { name: "New policy in v" }).waitFor();
  await page.getByLabel("Name", { exact: true }).fill("gfs");
  await page.getByLabel("Time zone").fill("UTC");
  await page.getByLabel("Daily: keep days").fill("3");
  await page.getByLabel("Weekly: keep weeks").fill("12");
  await page.getByRole("button", { name: "Preview" }).click();
  // The server's message for that field, beside the field.
  const daily = page.locator('.field-error[data-field="retention.daily.days"]');
  await daily.getByText("3 is out of range; allowed 7-9999").waitFor();
  assert.equal(await page.locator('.field-error[data-field="retention.weekly.weeks"]').textContent(), "");
  await page.getByRole("button", { name: "Create policy" }).click();
  await daily.getByText("out of range").waitFor();

  await page.getByLabel("Daily: keep days").fill("30");
  await page.getByLabel("Preview from").fill("2027-01-01"); // a fixed day: the same calendar whenever it runs
  await page.getByRole("button", { name: "Preview" }).click();
  await page.locator("#policy-preview").waitFor();
  assert.equal(await daily.textContent(), "");
  // A year of daily backups: the calendar marks each day; 30 daily and 12 weekly points
  // survive (a weekly one can also be a daily one).
  assert.equal(await page.locator(".day.run").count(), 31 + 28, "January and February 2027, every day");
  const dots = await page.locator("svg.survivors circle").count();
  assert.ok(dots >= 30 && dots <= 42, `${dots} surviving points drawn`);
  await accessible(page, "policy form with its preview");
  await shot(page, "policy");
  await page.getByRole("button", { name: "Create policy" }).click();
  await page.getByRole("heading", { name: "Policies" }).waitFor();
  await page.getByRole("link", { name: "gfs" }).waitFor();
  const stored = await (await fetch(base + "/api/v1/vaults/v/policies/gfs", { headers: { Authorization: `Bearer ${TOKEN}` } })).json();
  assert.deepEqual(stored.doc.retention.daily, { days: 30 });
  assert.equal(stored.doc.retention.weekly.weeks, 12);
  await page.close();
});

test("a vault's page: soft delete settings with the server's checks, verify followed to its end", async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(base + "/");
  await page.getByLabel("API token").fill(TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("link", { name: "Vaults" }).click();
  await page.getByRole("link", { name: "v", exact: true }).click();
  await page.getByRole("heading", { name: "Vault v" }).waitFor();
  await page.getByLabel("Days kept").fill("5");
  await page.getByRole("button", { name: "Save soft delete" }).click();
  await page.locator("form[aria-label='Save soft delete'] .error").getByText(/14.?180|14 to 180|between/).waitFor();
  await page.getByLabel("Days kept").fill("30");
  await page.getByRole("button", { name: "Save soft delete" }).click();
  await page.locator("#soft-delete").getByText("enabled, 30 days").waitFor();
  await accessible(page, "vault");
  await shot(page, "vault");
  await page.getByRole("button", { name: "Verify vault" }).click();
  await page.getByRole("heading", { name: /^Job .*: Verify of vault v$/ }).waitFor();
  await page.locator("#job-status").getByText("Completed", { exact: true }).waitFor({ timeout: 30000 });
  const report = JSON.parse(await page.locator("#job-report").textContent());
  assert.deepEqual(report.problems, []);
  assert.ok(report.chunks_checked > 0, JSON.stringify(report));
  await page.goBack();
  await page.getByRole("heading", { name: "Vault v" }).waitFor();
  await page.locator("section[aria-label='Last checks'] tbody tr").first().getByText("Verify").waitFor();
  await page.close();
});

/// Presses Tab until the focused element matches `want` (at most 60 times); returns its text.
async function tabTo(page, want, what) {
  for (let i = 0; i < 60; i++) {
    await page.keyboard.press("Tab");
    const hit = await page.evaluate((w) => {
      const a = document.activeElement;
      const text = (a.getAttribute("aria-label") || a.textContent || "").trim();
      return (a.tagName + " " + text).startsWith(w) ? text : null;
    }, want);
    if (hit != null) {
      // What has the focus shows it (an outline, not the browser's faint default only).
      const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
      assert.notEqual(outline, "none", `${what}: the focused ${want} shows no outline`);
      return hit;
    }
  }
  assert.fail(`${what}: Tab never reached ${want}`);
}

test("keyboard only: sign in, open an item, change its policy, see its next backup", async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(base + "/");
  await page.getByLabel("API token").waitFor();
  // The token field has the focus on arrival; Enter submits.
  await page.keyboard.type(TOKEN);
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Dashboard" }).waitFor();
  await tabTo(page, "A Items", "navigation");
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Items" }).waitFor();
  // A new page puts the focus at the start of its content, so Tab goes through the page.
  await tabTo(page, "A good", "the item list");
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Item good" }).waitFor();
  assert.equal(await page.locator("#item-policy").textContent(), "DefaultPolicy");
  await tabTo(page, "SELECT", "the item page");
  assert.equal(await page.evaluate(() => document.activeElement.id), "change-policy");
  await page.keyboard.press("End"); // the select's last option: weekly (the only other policy here besides gfs)
  const picked = await page.evaluate(() => document.activeElement.value);
  await tabTo(page, "BUTTON Change policy", "the change-policy form");
  await page.keyboard.press("Enter");
  await page.locator("#item-policy").getByText(picked, { exact: true }).waitFor();
  const item = await get("/api/v1/items/good");
  assert.equal(item.policy, picked);
  // The page shows the next backup the server computed for the new schedule.
  assert.equal(await page.locator("#next-backup time").getAttribute("datetime"), item.next_backup);
  const slot = new Date(item.next_backup);
  if (picked === "weekly") {
    assert.equal(slot.getUTCDay(), 6, "Saturday");
    assert.ok(slot.getUTCHours() === 22 && slot.getUTCMinutes() < 10, item.next_backup);
  }
  await page.close();
});

test("jobs list: a running backup shows its phase and progress live, and is cancelled from the list", async () => {
  // A home of its own whose server holds every backup after its first chunk (a test-hooks
  // gate), so the backup is really running while the list shows it.
  const home2 = join(dir, "home-gated");
  kuraIn(home2, {}, "vault", "create", "w", "--no-encryption", "--chunk-size", "64KiB");
  const slow = join(dir, "slow.raw");
  writeFileSync(slow, randomBytes(4 << 20));
  kuraIn(home2, {}, "item", "protect", "disk", slow, "--vault", "w");
  const gate = join(dir, "gate");
  const at = await startServer(home2, { KURA_TEST_GATE_TRANSFER_CHUNK: gate });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await signIn(page, at);
  await page.goto(at + "/#/items/slow");
  await page.getByRole("button", { name: "Back up now" }).click();
  for (let i = 0; !existsSync(gate + ".reached"); i++) {
    assert.ok(i < 600, "the backup never reached its first chunk: is KURA_BIN built with --features kura/test-hooks?");
    await sleep(50);
  }
  await page.getByRole("link", { name: "Jobs", exact: true }).click();
  const row = page.locator("main tbody tr").filter({ hasText: "slow" }).first();
  await row.locator(".status").getByText("InProgress", { exact: true }).waitFor();
  await row.locator("progress").waitFor();
  assert.equal(await row.locator("td").nth(4).textContent(), "transfer", "the phase is the sub-task running");
  await accessible(page, "jobs with a running job");
  await shot(page, "jobs");
  page.once("dialog", (d) => d.accept());
  await row.getByRole("button", { name: /^Cancel job / }).click();
  await row.locator(".status").getByText("Cancelling", { exact: true }).waitFor();
  writeFileSync(gate + ".release", "");
  // The list follows the job to its end without a reload.
  await row.locator(".status").getByText("Cancelled", { exact: true }).waitFor({ timeout: 30000 });
  const item = await get("/api/v1/items/slow", at);
  assert.equal(item.recovery_points, 0, "a cancelled backup keeps nothing");
  await page.close();
});

test("a page still loading when the user moves on does not draw over the next page", async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  // The dashboard's trend requests are held until the user is on the policies page.
  let release;
  const held = new Promise((resolve) => (release = resolve));
  let asked = 0;
  await page.route("**/api/v1/vaults/*/trend", async (r) => { asked++; await held; await r.continue(); });
  await page.goto(base + "/");
  await page.getByLabel("API token").fill(TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  while (asked === 0) await sleep(20);
  await page.getByRole("link", { name: "Policies" }).click();
  await page.getByRole("heading", { name: "Policies" }).waitFor();
  release();
  // The dashboard's answers arrive now; wait until the browser has them all.
  await page.waitForLoadState("networkidle");
  assert.equal(await page.locator("main h1").textContent(), "Policies");
  await page.close();
});

test("the UI offers only the operations the session may call", async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  // The server's own session answer, less two operations (as a role without them would get).
  const session = await (await fetch(base + "/api/v1/session", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token: TOKEN }),
  })).json();
  assert.ok(session.operations.includes("backupNow") && session.operations.includes("restoreDisk"), JSON.stringify(session));
  const narrow = async (r) => {
    const res = await r.fetch();
    const body = await res.json();
    if (res.ok()) body.operations = body.operations.filter((op) => op !== "backupNow" && op !== "restoreDisk");
    await r.fulfill({ response: res, json: body });
  };
  await page.route("**/api/v1/session", narrow);
  await signIn(page);
  await page.goto(base + "/#/items/good");
  await page.getByRole("heading", { name: "Item good" }).waitFor();
  await page.getByRole("button", { name: "Stop protection, keep data" }).waitFor();
  assert.equal(await page.getByRole("button", { name: "Back up now" }).count(), 0);
  assert.equal(await page.getByRole("link", { name: /^Restore point / }).count(), 0);
  await page.close();
});

test("files of a file item's point: no disk or volume, a file put back where it was", async () => {
  const h = join(dir, "home-tree");
  const share = join(dir, "tree-share");
  mkdirSync(join(share, "docs"), { recursive: true });
  writeFileSync(join(share, "docs/plan.txt"), "the plan\n");
  writeFileSync(join(share, "docs/other.txt"), "kept as it is\n");
  kuraIn(h, {}, "vault", "create", "t", "--no-encryption");
  kuraIn(h, {}, "item", "protect", "files", share, "--vault", "t", "--name", "docs");
  kuraIn(h, {}, "backup", "now", "docs");
  writeFileSync(join(share, "docs/plan.txt"), "a worse plan\n");
  const at = await startServer(h);
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await signIn(page, at);
  await page.goto(at + "/#/items/docs");
  await page.getByRole("link", { name: /^Files of point / }).click();
  await page.getByRole("heading", { name: "Files of docs" }).waitFor();
  await page.getByText(/^Tree files;/).waitFor();
  // A tree has no disks, no volumes and no NBD export.
  assert.equal(await page.locator("#files-disk, #files-volume").count(), 0);
  assert.equal(await page.getByRole("heading", { name: "The whole disk over NBD" }).count(), 0);
  await page.getByRole("link", { name: "docs/" }).click();
  await page.getByRole("cell", { name: "plan.txt", exact: true }).waitFor();
  await accessible(page, "file browser of a tree");

  // The old plan back where it was, replacing the new one; nothing else touched.
  await page.getByLabel("Select plan.txt").check();
  await page.getByLabel("Or back where they were (the original location)").check();
  await page.getByLabel("Replace files that exist (else they are skipped)").check();
  await page.getByRole("button", { name: "Restore selected" }).click();
  await page.getByRole("heading", { name: /^Job .*: RestoreFiles of docs$/ }).waitFor();
  await page.locator("#job-status").getByText("Completed", { exact: true }).waitFor({ timeout: 30000 });
  assert.equal(readFileSync(join(share, "docs/plan.txt"), "utf8"), "the plan\n");
  assert.equal(readFileSync(join(share, "docs/other.txt"), "utf8"), "kept as it is\n");
  await page.close();
});

test("files of a point: browse its ext4 partition, download a file, restore a folder", async () => {
  // A GPT disk with an ext4 partition (sfdisk, mkfs.ext4 -d), protected and backed up in a
  // home of its own.
  const h = join(dir, "home-files");
  const src = join(dir, "files-src");
  mkdirSync(join(src, "srv/www"), { recursive: true });
  writeFileSync(join(src, "srv/www/index.html"), "<h1>hello</h1>\n");
  writeFileSync(join(src, "srv/notes.txt"), "remember the milk\n");
  const img = join(dir, "files.raw");
  writeFileSync(img, Buffer.alloc(0));
  truncateSync(img, 24 << 20);
  execFileSync("sfdisk", ["--quiet", img], { input: "label: gpt\nstart=2048, size=32768, name=data\n" });
  execFileSync("mkfs.ext4", ["-q", "-F", "-E", "offset=1048576", "-d", src, img, "16M"]);
  kuraIn(h, {}, "vault", "create", "f", "--no-encryption", "--chunk-size", "64KiB");
  kuraIn(h, {}, "item", "protect", "disk", img, "--vault", "f", "--name", "share");
  kuraIn(h, {}, "backup", "now", "share");
  const at = await startServer(h);
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  await signIn(page, at);
  await page.goto(at + "/#/items/share");
  await page.getByRole("link", { name: /^Files of point / }).click();
  await page.getByRole("heading", { name: "Files of share" }).waitFor();
  await page.getByRole("link", { name: "srv/" }).click();
  await page.getByRole("cell", { name: "notes.txt", exact: true }).waitFor();
  await accessible(page, "file browser");
  await shot(page, "files");

  // Download one file: the browser saves exactly its contents.
  const [download] = await Promise.all([page.waitForEvent("download"),
    page.getByRole("link", { name: "Download notes.txt" }).click()]);
  assert.equal(download.suggestedFilename(), "notes.txt");
  assert.equal(readFileSync(await download.path(), "utf8"), "remember the milk\n");
  // A folder as a zip, which Info-ZIP's unzip lists.
  const [zip] = await Promise.all([page.waitForEvent("download"),
    page.getByRole("link", { name: "Download .zip of www" }).click()]);
  assert.equal(zip.suggestedFilename(), "www.zip");
  assert.match(execFileSync("unzip", ["-l", await zip.path()], { encoding: "utf8" }), /www\/index\.html/);

  // Restore the www folder into a directory on the server and follow the job.
  const to = join(dir, "files-out");
  mkdirSync(to);
  await page.getByLabel("Select www").check();
  await page.getByLabel("Into the existing directory").fill(to);
  await page.getByRole("button", { name: "Restore selected" }).click();
  await page.getByRole("heading", { name: /^Job .*: RestoreFiles of share$/ }).waitFor();
  await page.locator("#job-status").getByText("Completed", { exact: true }).waitFor({ timeout: 30000 });
  assert.equal(readFileSync(join(to, "www/index.html"), "utf8"), "<h1>hello</h1>\n");

  // The whole disk over NBD: the URI shown is served (libnbd's nbdinfo reads it) until
  // the export is ended.
  await page.goto(at + "/#/files/share/latest");
  await page.getByRole("button", { name: "Export over NBD" }).click();
  const uri = (await page.locator("#export-uri").textContent()).trim();
  assert.match(execFileSync("nbdinfo", ["--size", uri], { encoding: "utf8" }), /^25165824/);
  await page.getByRole("button", { name: "End export" }).click();
  await page.getByText("The export has ended.").waitFor();
  assert.throws(() => execFileSync("nbdinfo", [uri], { stdio: "ignore" }), "an ended export is gone");

  // A path that is not there: the API's message, and no job.
  await page.goto(at + `/#/files/share/latest?path=${encodeURIComponent("/srv/nope")}`);
  await page.getByText(/no such file or directory/).waitFor();
  await page.close();
});

test("restore from a geo vault's replica while its primary location is gone", async () => {
  kura("vault", "create", "geo", "--no-encryption", "--chunk-size", "64KiB",
    "--redundancy", "geo", "--replica", join(dir, "geo-replica"));
  const src = image("far.raw", 1 << 20);
  kura("item", "protect", "disk", src, "--vault", "geo", "--name", "far");
  kura("backup", "now", "far");
  kura("vault", "replicate", "geo");
  const primary = join(home, "vaults", "geo");
  renameSync(primary, join(dir, "geo-away"));
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    // The dashboard still shows every vault; this one's storage is marked unreachable.
    await signIn(page);
    await page.locator("#vaults-title").waitFor();
    await page.getByText("(last known: storage unreachable)").waitFor();
    const newest = (await get("/api/v1/items/far/recovery-points"))[0];
    await page.goto(base + `/#/restore/far/${encodeURIComponent(newest.id)}`);
    await page.getByRole("heading", { name: "Restore far" }).waitFor();
    const target = join(dir, "far-restored.raw");
    await page.getByLabel("Target file on the server").fill(target);
    // Without the replica the primary is read, and it is gone: the job fails.
    await page.getByRole("button", { name: "Review" }).click();
    await page.getByRole("button", { name: "Restore" }).click();
    await page.locator("#restore-error").filter({ hasText: /./ })
      .or(page.locator("#job-status").getByText("Failed", { exact: true })).waitFor({ timeout: 30000 });
    assert.ok(!existsSync(target), "a failed restore leaves no target");
    await page.goto(base + `/#/restore/far/${encodeURIComponent(newest.id)}`);
    await page.getByRole("heading", { name: "Restore far" }).waitFor();
    await page.getByLabel("Target file on the server").fill(target);
    await page.getByLabel(/geo replica/).check();
    await page.getByRole("button", { name: "Review" }).click();
    await page.locator("#restore-summary").getByText(/read from the vault's geo replica/).waitFor();
    await accessible(page, "restore wizard of a geo vault");
    await page.getByRole("button", { name: "Restore" }).click();
    await page.locator("#job-status").getByText("Completed", { exact: true }).waitFor({ timeout: 30000 });
    const sha = (p) => createHash("sha256").update(readFileSync(p)).digest("hex");
    assert.equal(sha(target), sha(src), "the image from the replica is the source");
    await page.close();
  } finally {
    renameSync(join(dir, "geo-away"), primary);
  }
});
