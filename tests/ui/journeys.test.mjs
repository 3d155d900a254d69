// Journeys through kura's web UI in a real browser: Playwright (playwright-core) driving
// Debian's chromium, against a real `kura server` over a home the test fills with the CLI.
// Run by scripts/test (`KURA_BIN=... node --test tests/ui/`).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from "node:fs";
import { createHash } from "node:crypto";
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
let server;
let base;
let browser;

// KURA_UI_SCREENSHOTS=DIR saves a picture of each main page there (docs/ui is made so).
async function shot(page, name) {
  const to = process.env.KURA_UI_SCREENSHOTS;
  if (to) await page.screenshot({ path: join(to, `${name}.png`), fullPage: true });
}

function kura(...args) {
  return execFileSync(KURA, ["--home", home, ...args], {
    env: { ...process.env, KURA_PASSPHRASE: "" },
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
}

function image(name, bytes) {
  const p = join(dir, name);
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i += 4096) b[i] = (i / 4096) % 251;
  writeFileSync(p, b);
  return p;
}

before(async () => {
  kura("vault", "create", "v", "--no-encryption", "--chunk-size", "64KiB");
  kura("item", "protect", "disk", image("good.raw", 1 << 20), "--vault", "v");
  kura("backup", "now", "good");
  const gone = image("gone.raw", 1 << 20);
  kura("item", "protect", "disk", gone, "--vault", "v");
  rmSync(gone);
  assert.throws(() => kura("backup", "now", "gone"), "a backup of a missing image fails");
  server = spawn(KURA, ["--home", home, "server", "--listen", "127.0.0.1:0", "--no-scheduler",
    "--allow-restore", dir], {
    env: { ...process.env, KURA_ADMIN_TOKEN: TOKEN },
    stdio: ["ignore", "pipe", "ignore"],
  });
  const first = await new Promise((resolve) => createInterface({ input: server.stdout }).once("line", resolve));
  base = first.split(/\s+/).find((w) => w.startsWith("http://")).replace(/\/api\/v1$/, "");
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  server?.kill();
  rmSync(dir, { recursive: true, force: true });
});

test("sign in, see the dashboard's jobs and items, sign out and be refused", async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  await page.goto(base + "/");
  await shot(page, "sign-in");
  await page.getByLabel("API token").fill("kura_not_a_token");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByText("That token is not accepted").waitFor();

  await page.getByLabel("API token").fill(TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Dashboard" }).waitFor();
  // The counts are the API's jobs: two protections and a backup completed, a backup failed.
  const all = await (await fetch(base + "/api/v1/jobs", { headers: { Authorization: `Bearer ${TOKEN}` } })).json();
  const completed = all.filter((j) => j.status === "Completed").length;
  assert.equal(completed, 3, JSON.stringify(all.map((j) => [j.operation, j.status])));
  const jobs = page.locator("#job-counts");
  assert.equal(await jobs.locator('[data-status="Completed"] .n').textContent(), String(completed));
  assert.equal(await jobs.locator('[data-status="Failed"] .n').textContent(), "1");
  // The failed item needs attention; the session survives a reload (HttpOnly cookie).
  await page.getByRole("cell", { name: "gone", exact: true }).waitFor();
  await shot(page, "dashboard");
  await page.reload();
  await page.getByRole("heading", { name: "Dashboard" }).waitFor();

  await page.getByRole("link", { name: "Items" }).click();
  await page.getByRole("heading", { name: "Items" }).waitFor();
  for (const name of ["good", "gone"]) {
    await page.getByRole("cell", { name, exact: true }).waitFor();
  }
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
  await page.getByRole("heading", { name: "Recovery points (1)" }).waitFor();

  // The job appears and reaches Completed with no reload: the page follows it.
  const loads = [];
  page.on("load", () => loads.push(1));
  await page.getByRole("button", { name: "Back up now" }).click();
  await page.getByRole("heading", { name: "Recovery points (2)" }).waitFor({ timeout: 30000 });
  const newest = page.locator("section[aria-label=Jobs] tbody tr").first();
  assert.equal(await newest.locator("td").nth(1).textContent(), "Backup");
  assert.equal(await newest.locator(".status").textContent(), "Completed");
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
  assert.equal(item.recovery_points, 2, "undelete kept the points");
  await page.close();
});

test("restore a recovery point through the wizard and get the image back", async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  await page.goto(base + "/");
  await page.getByLabel("API token").fill(TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Dashboard" }).waitFor();
  await page.goto(base + "/#/items/good");
  await page.getByRole("heading", { name: "Item good" }).waitFor();
  await page.getByRole("link", { name: /^Restore point / }).first().click();
  await page.getByRole("heading", { name: "Restore good" }).waitFor();
  const target = join(dir, "restored.raw");
  await page.getByLabel("Target file on the server").fill(target);
  await page.getByRole("button", { name: "Review" }).click();
  await page.locator("#restore-summary").getByText(`to ${target}`).waitFor();
  await shot(page, "restore");
  await page.getByRole("button", { name: "Restore" }).click();
  await page.getByRole("heading", { name: /^Job .*: Restore of good$/ }).waitFor();
  await page.locator("#job-status").getByText("Completed", { exact: true }).waitFor({ timeout: 30000 });
  await page.locator("#job-report").waitFor();
  await shot(page, "job");
  const sha = (p) => createHash("sha256").update(readFileSync(p)).digest("hex");
  assert.equal(sha(target), sha(join(dir, "good.raw")), "the restored image is the source");

  // On a phone-width screen the pages fit: nothing makes the page scroll sideways.
  await page.setViewportSize({ width: 390, height: 800 });
  for (const hash of ["#/", "#/items", "#/items/good", "#/jobs"]) {
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
