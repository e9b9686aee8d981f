// Drives Debian's chromium (no browser download) through the dashboard,
// for tests/dashboard.rs. It prints progress lines, "READY-FOR-LOG" when the
// app page's log stream is open (the Rust side then makes the app print),
// and "OK" at the end; any failed expectation exits non-zero.
//
// Env: LOGIN_URL (a dashboard:login link), BASE (the loopback listener),
// APP, PROBE (the path the app will log), VIEWER_TOKEN,
// SHOTS (screenshot dir), PROFILE (a fresh user-data-dir).
import { chromium } from "playwright-core";
import path from "node:path";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const LOGIN_URL = env("LOGIN_URL");
const BASE = env("BASE");
const APP = env("APP");
const PROBE = env("PROBE");
const SHOTS = env("SHOTS");
const TIMEOUT = 60_000;

function expect(cond, what) {
  if (!cond) throw new Error(`expected: ${what}`);
  console.log(`ok: ${what}`);
}

const shot = (page, name) => page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });

const browser = await chromium.launchPersistentContext(env("PROFILE"), {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
  ],
  viewport: { width: 1200, height: 900 },
});
const timer = setTimeout(() => { console.log("the script ran out of time"); process.exit(3); }, 200_000);

try {
  // 1. The one-time link (control host, through the proxy) signs in.
  const page = browser.pages()[0] || (await browser.newPage());
  page.setDefaultTimeout(TIMEOUT);
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(LOGIN_URL);
  await page.waitForURL((u) => u.pathname === "/");
  const origin = new URL(page.url()).origin;
  await page.locator(`tr[data-app="${APP}"]`).waitFor();
  expect(true, "the one-time link signed in and the app is listed");
  await page.locator("svg.chart").waitFor();
  await shot(page, "login-link");
  await shot(page, "apps");

  // 2. The app page: live logs as they come.
  await page.click(`a.app-link[href="/apps/${APP}"]`);
  await page.waitForURL(`${origin}/apps/${APP}`);
  await page.locator("#log-state", { hasText: "live" }).waitFor();
  await page.evaluate(() => { window.__stillHere = true; });
  console.log("READY-FOR-LOG");
  await page.locator("#log", { hasText: PROBE }).waitFor();
  expect(true, "the app's log line appeared live");
  await shot(page, "app-live-log");

  // 3. A forged change without the CSRF token is refused.
  const forged = await page.evaluate(async (app) => {
    const r = await fetch(`/api/v1/apps/${app}/releases`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: "{}",
    });
    return r.status;
  }, APP);
  expect(forged === 403, `a POST without the CSRF token is refused (got ${forged})`);

  // 4. Roll back to v1: a new release goes live, without a reload.
  await page.click('button[data-rollback="v1"]');
  await page.locator('tr[data-version="v3"] [data-status="live"]').waitFor({ timeout: 90_000 });
  await page.locator('tr[data-version="v2"] [data-status="superseded"]').waitFor();
  const same = await page.evaluate(() => window.__stillHere === true);
  expect(same, "v3 is marked live without a reload");
  await page.locator(".live-release", { hasText: "v3" }).waitFor();
  await shot(page, "app-rolled-back");
  expect(errors.length === 0, `no script errors (${errors.join("; ")})`);

  // 5. A deploy while the page is open: its stages and its failure show
  // up without a reload (the Rust side pushes a build that fails).
  console.log("READY-FOR-DEPLOY");
  await page.locator("#deploy .deploy").waitFor({ timeout: 120_000 });
  const seen = await page.locator("#deploy .deploy").getAttribute("class");
  console.log(`deploy section appeared as: ${seen}`);
  await page.locator("#deploy .deploy.failed ol.stages li.failed", { hasText: "building" })
    .waitFor({ timeout: 120_000 });
  await page.locator("#deploy .deploy.failed h2", { hasText: "Deploy of v4 failed" }).waitFor();
  await page.locator("#deploy pre.build-log", { hasText: "does-not-exist" }).waitFor();
  await page.locator('tr[data-version="v4"] [data-status="failed"]').waitFor();
  const buildLog = await page.locator("#deploy pre.build-log").textContent();
  expect(buildLog.includes("<i>cygni</i>") && (await page.locator("#deploy i").count()) === 0,
    "build output with markup shows as text, never as HTML");
  expect(await page.evaluate(() => window.__stillHere === true),
    "the failed deploy, its stage and its build log show without a reload");
  await page.locator('tr[data-version="v3"] [data-status="live"]').waitFor();
  await shot(page, "deploy-failed");

  // 6. The token form, a viewer: no buttons, and refused anyway. It signs
  // in on the loopback listener, another origin than the control host, so
  // the admin's session cookie stays apart.
  const vpage = await browser.newPage();
  vpage.setDefaultTimeout(TIMEOUT);
  await vpage.goto(`${BASE}/login`);
  await shot(vpage, "login-form");
  await vpage.fill("#token", env("VIEWER_TOKEN"));
  await vpage.click('button[type="submit"]');
  await vpage.waitForURL(`${BASE}/`);
  await shot(vpage, "token-login");
  await vpage.goto(`${BASE}/apps/${APP}`);
  await vpage.locator('tr[data-version="v3"]').waitFor();
  expect(await vpage.locator("button[data-rollback]").count() === 0, "a viewer has no rollback button");
  expect(await vpage.locator("form[data-config-set]").count() === 0, "a viewer has no config form");
  const refused = await vpage.evaluate(async (app) => {
    const csrf = document.querySelector('meta[name="csrf-token"]').content;
    const r = await fetch(`/api/v1/apps/${app}/releases`, {
      method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf }, body: "{}",
    });
    return [r.status, (await r.json()).message];
  }, APP);
  expect(refused[0] === 403, `the server refuses a viewer's rollback (${refused.join(" ")})`);
  await shot(vpage, "viewer");
  console.log("OK");
} finally {
  clearTimeout(timer);
  await browser.close();
}
