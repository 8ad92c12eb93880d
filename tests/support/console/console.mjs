// The console in a real browser (run by tests/console.rs): playwright-core driving Debian's
// chromium against a running switchboard. Environment:
//   SWITCHBOARD_TEST_BROWSER  a directory holding node_modules/playwright-core
//   CHROMIUM                  the browser (default /usr/bin/chromium)
//   CONSOLE_BASE              the server, http://127.0.0.1:PORT
//   CONSOLE_ADMIN_KEY, CONSOLE_APP_KEY   an admin key and a key without the admin role
//   CONSOLE_ROUTES            the server's routes.toml (overwritten with a typo at one step)
//   CONSOLE_SHOTS             where each step's screenshot goes
// Prints one line per step; exits non-zero at the first failed check.

import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const base = env("CONSOLE_BASE");
const adminKey = env("CONSOLE_ADMIN_KEY");
const appKey = env("CONSOLE_APP_KEY");
const routes = env("CONSOLE_ROUTES");
const shots = env("CONSOLE_SHOTS");
const playwright = join(env("SWITCHBOARD_TEST_BROWSER"), "node_modules", "playwright-core", "index.mjs");
const { chromium } = await import(pathToFileURL(playwright).href);
mkdirSync(shots, { recursive: true });

/** How long a step may wait for the page: generous, the machine may be loaded. */
const WAIT = 30000;

function check(condition, message) {
  if (!condition) throw new Error("check failed: " + message);
}

async function api(method, path, body) {
  const response = await fetch(base + path, {
    method,
    headers: { Authorization: `Bearer ${adminKey}`, "Content-Type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

async function waitFinal(id) {
  for (let i = 0; i < 300; i++) {
    const { body } = await api("GET", `/v1/messages/${id}`);
    if (body && (body.status === "sent" || body.status === "failed")) return body;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`message ${id} did not finish`);
}

let step = 0;
async function shot(page, name) {
  step += 1;
  const file = join(shots, `${String(step).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`step ${step}: ${name} (${file})`);
}

/** WCAG relative luminance of an `rgb(…)`/`rgba(…)` colour. */
function luminance(color) {
  const [r, g, b] = color.match(/[\d.]+/g).slice(0, 3).map(Number).map((v) => {
    const c = v / 255;
    return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}

function contrast(a, b) {
  const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
  return (hi + 0.05) / (lo + 0.05);
}

/** Labels, headings, badge contrast and no horizontal overflow, on what the page shows now. */
async function accessibility(page, where) {
  const found = await page.evaluate(() => {
    const visible = (e) => !!(e.offsetWidth || e.offsetHeight || e.getClientRects().length);
    const unlabelled = [...document.querySelectorAll("input, select, textarea")]
      .filter((e) => e.type !== "hidden")
      .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute("aria-label") && !e.getAttribute("aria-labelledby"))
      .map((e) => e.id || e.name || e.outerHTML);
    const badges = [...document.querySelectorAll(".badge")].filter(visible).map((e) => {
      const style = getComputedStyle(e);
      return { text: e.textContent, color: style.color, background: style.backgroundColor };
    });
    return {
      unlabelled,
      h1: document.querySelectorAll("h1").length,
      h2: [...document.querySelectorAll("h2")].filter(visible).length,
      overflow: document.documentElement.scrollWidth - window.innerWidth,
      badges,
    };
  });
  check(found.unlabelled.length === 0, `${where}: inputs without a label: ${found.unlabelled}`);
  check(found.h1 === 1, `${where}: one h1 (found ${found.h1})`);
  check(found.h2 >= 1, `${where}: an h2 is shown`);
  check(found.overflow <= 0, `${where}: no horizontal overflow (${found.overflow}px)`);
  for (const badge of found.badges) {
    const ratio = contrast(badge.color, badge.background);
    check(ratio >= 4.5, `${where}: badge "${badge.text}" contrast ${ratio.toFixed(2)} (${badge.color} on ${badge.background})`);
  }
  return found.badges.length;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
});
let failure = null;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (error) => problems.push("page error: " + error.message));
  page.on("console", (message) => {
    // A refused key is an expected 401 the browser reports as a failed resource.
    if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) {
      problems.push("console: " + message.text());
    }
  });

  // 1. The page asks for the key (keys are configured): nothing is shown without one.
  const served = await page.goto(base + "/console");
  const csp = served.headers()["content-security-policy"] || "";
  check(csp.includes("default-src 'self'"), "the page is served with a strict Content-Security-Policy: " + csp);
  await page.locator("#login").waitFor({ state: "visible", timeout: WAIT });
  check(await page.locator("#app").isHidden(), "nothing but the prompt without a key");
  await accessibility(page, "key prompt");
  await shot(page, "key-prompt");

  // 2. With the admin key: both providers, breakers closed.
  await page.fill("#key", adminKey);
  await page.click("#login-form button[type=submit]");
  const bad = page.locator('#providers tr[data-provider="bad"]');
  const good = page.locator('#providers tr[data-provider="good"]');
  await bad.waitFor({ timeout: WAIT });
  await good.waitFor({ timeout: WAIT });
  check((await bad.locator(".badge").first().textContent()) === "closed", "bad starts closed");
  check((await good.locator(".badge").first().textContent()) === "closed", "good starts closed");
  check((await page.locator("#config-loaded-by").textContent()) === "start", "the config was loaded at start");
  check((await page.locator('#routes tr[data-channel="sms"]').textContent()).includes("bad"), "the sms route lists its providers");
  check(await page.evaluate(() => sessionStorage.length === 1 && document.cookie === ""), "the key is in sessionStorage, not a cookie");
  check(!page.url().includes(adminKey), "the key is not in the URL");
  await accessibility(page, "providers");
  await shot(page, "providers");

  // 3. Messages through the API: the email fails on `bad` (its only provider), the sms fails
  // over to `good`; two failures open bad's breaker, which the page shows without a reload.
  const email = await api("POST", "/v1/messages", { channel: "email", from: "ops@example.com", to: "someone@example.com", body: "hello" });
  check(email.status === 202, "email accepted: " + JSON.stringify(email.body));
  const failed = await waitFinal(email.body.id);
  check(failed.status === "failed", "the email failed: " + failed.status);
  const sms = await api("POST", "/v1/messages", { channel: "sms", from: "+12016661234", to: "+18045551234", body: "hello" });
  check(sms.status === 202, "sms accepted: " + JSON.stringify(sms.body));
  const sent = await waitFinal(sms.body.id);
  check(sent.status === "sent" && sent.provider === "good", "the sms was sent by good: " + JSON.stringify(sent));
  await page.waitForFunction(
    () => document.querySelector('#providers tr[data-provider="bad"] .badge')?.textContent === "open",
    null, { timeout: WAIT });
  check((await bad.locator(".retry").textContent()).startsWith("retry in "), "the open breaker's time to retry is shown");
  check((await good.locator(".badge").first().textContent()) === "closed", "good stays closed");
  await shot(page, "breaker-open");

  // 4. The sms found by its id opens with its attempts: bad's error, then good's success.
  await page.fill("#m-id", sms.body.id);
  await page.click("#search button[type=submit]");
  await page.locator("#message").waitFor({ state: "visible", timeout: WAIT });
  check((await page.locator("#message-id").textContent()) === sms.body.id, "the message shown is the one searched");
  const attempts = await page.locator("#timeline li.attempt").allTextContents();
  check(attempts.length === 2, "two attempts: " + attempts);
  check(attempts[0].includes("bad") && attempts[0].includes("error"), "first attempt: bad, error: " + attempts[0]);
  check(attempts[1].includes("good") && attempts[1].includes("success"), "second attempt: good, success: " + attempts[1]);
  const timeline = await page.locator("#timeline li").evaluateAll((items) => items.map((li) => li.className));
  check(JSON.stringify(timeline) === JSON.stringify(["event", "event", "attempt", "attempt", "event"]),
    "the timeline: queued, sending, the two attempts, sent: " + timeline);
  check(await page.locator("#retry").isHidden(), "a sent message has no Retry button");
  await shot(page, "message");

  // 5. The failed email, found by recipient and status, has a Retry button that retries it.
  await page.fill("#m-id", "");
  await page.fill("#m-to", "someone@example.com");
  await page.selectOption("#m-status", "failed");
  await page.click("#search button[type=submit]");
  const row = page.locator(`#results tr[data-message="${email.body.id}"]`);
  await row.waitFor({ timeout: WAIT });
  check((await page.locator("#results tbody tr").count()) === 1, "only the failed email matches");
  await row.locator("button").click();
  await page.locator("#retry").waitFor({ state: "visible", timeout: WAIT });
  await page.click("#retry");
  await page.waitForFunction(() => document.querySelector("#retry-status").textContent.startsWith("Retry accepted"), null, { timeout: WAIT });
  const retried = await api("GET", `/v1/messages/${email.body.id}`);
  check(retried.body.status === "queued", "the retried email is queued again: " + retried.body.status);
  await accessibility(page, "message");
  await shot(page, "retried");

  // 6. The charts: a sample with attempts shows up (one every few seconds).
  await page.waitForFunction(
    () => document.querySelector('#providers tr[data-provider="good"] .bars rect.success') !== null,
    null, { timeout: WAIT });
  check((await good.locator(".spark polyline, .spark circle").count()) > 0, "good's sparklines have points");

  // 7. routes.toml overwritten with a typo: the rejected reload with its line number.
  const original = readFileSync(routes, "utf8");
  const typo = original + '\n[providers.typo]\nkind = "mokc"\nchannels = ["sms"]\n';
  const line = typo.split("\n").indexOf('kind = "mokc"') + 1;
  writeFileSync(routes, typo);
  await page.locator("#rejected").waitFor({ state: "visible", timeout: WAIT });
  const diagnostics = await page.locator("#diagnostics li").allTextContents();
  check(diagnostics.some((d) => d.includes(`:${line}:`) && d.includes("mokc")), `a diagnostic at line ${line}: ${diagnostics}`);
  check((await page.locator("#config-loaded-by").textContent()) === "start", "the last good config keeps serving");
  await accessibility(page, "rejected reload");
  await shot(page, "rejected-reload");
  // The picture of specs/console.md: the top of the page at 1280x800.
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(shots, "console.png") });

  // 8. The narrow screen: the same page without horizontal scrolling.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.locator('#providers tr[data-provider="bad"]').waitFor({ timeout: WAIT });
  const badges = await accessibility(page, "390x844");
  check(badges > 0, "badges were checked at 390x844");
  await shot(page, "narrow");
  await page.setViewportSize({ width: 1280, height: 800 });

  // 9. A wrong key, then a key without the admin role: the prompt comes back each time.
  await page.click("#change-key");
  await page.fill("#key", "sb_not_a_key");
  await page.click("#login-form button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#login-reason").textContent.includes("401"), null, { timeout: WAIT });
  check(await page.locator("#login").isVisible(), "the prompt is back after a wrong key");
  check(await page.locator("#app").isHidden(), "nothing is shown with a wrong key");
  await shot(page, "wrong-key");
  await page.fill("#key", appKey);
  await page.click("#login-form button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#login-reason").textContent.includes("403"), null, { timeout: WAIT });
  check(await page.evaluate(() => sessionStorage.length === 0), "a refused key is forgotten");
  await shot(page, "not-admin");

  check(problems.length === 0, "no script error nor policy violation: " + problems.join("; "));
  await context.close();
} catch (error) {
  failure = error;
} finally {
  await browser.close();
}
if (failure) {
  console.error(failure.stack || String(failure));
  process.exit(1);
}
console.log("console: every step passed");
