// Headless Chromium for the page tests, driven from Python one JSON command per line.
//
// Reads {"id", "cmd", ...} lines on stdin, answers {"id", "ok": true, "value"} or
// {"id", "ok": false, "error"} on stdout. Each "context" name is its own browser profile
// (cookies), so an admin and a plain user can be logged in side by side. Every page records
// the JSON bodies of the guard report it fetched and every dialog it tried to open (an
// injected alert() would show up there), so tests can compare what the page drew with what
// the API said.
//
// Uncaught script errors are recorded too.
//
// Environment: PLAYWRIGHT_CORE (path of the playwright-core package), CHROMIUM (executable),
// GUARD_API_PATH (the report URL path that is recorded).
"use strict";

const readline = require("readline");
const { chromium } = require(process.env.PLAYWRIGHT_CORE || "playwright-core");

const reportPath = process.env.GUARD_API_PATH;
const contexts = new Map();
let browser;

async function tab(name) {
  if (!contexts.has(name)) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    const entry = { context, page, reports: [], pending: [], dialogs: [], errors: [] };
    page.on("response", (response) => {
      const url = new URL(response.url());
      if (url.pathname === reportPath && response.request().method() === "GET" && response.ok()) {
        // a page closed mid-read loses that body: it was never drawn either
        const body = response.json().then((json) => entry.reports.push(json), () => {});
        entry.pending.push(body);
      }
    });
    page.on("pageerror", (error) => entry.errors.push(String(error)));
    page.on("dialog", (dialog) => {
      entry.dialogs.push(dialog.message());
      dialog.dismiss().catch(() => {});
    });
    contexts.set(name, entry);
  }
  return contexts.get(name);
}

const commands = {
  async goto({ context, url }) {
    const entry = await tab(context);
    entry.reports.length = 0;
    const response = await entry.page.goto(url);
    return { status: response.status(), url: entry.page.url() };
  },
  async fill({ context, selector, value }) {
    await (await tab(context)).page.fill(selector, value);
  },
  async click({ context, selector }) {
    const { page } = await tab(context);
    await Promise.all([page.waitForLoadState(), page.click(selector)]);
  },
  async submit({ context, selector }) {
    const { page } = await tab(context);
    await Promise.all([page.waitForNavigation(), page.click(selector)]);
    return { url: page.url() };
  },
  async evaluate({ context, expression }) {
    return (await tab(context)).page.evaluate(expression);
  },
  async wait_for({ context, expression, timeout }) {
    const { page } = await tab(context);
    const handle = await page.waitForFunction(expression, null, { timeout, polling: 50 });
    return handle.jsonValue();
  },
  async reports({ context }) {
    const entry = await tab(context);
    await Promise.all(entry.pending);
    return entry.reports;
  },
  async dialogs({ context }) {
    return (await tab(context)).dialogs;
  },
  async errors({ context }) {
    return (await tab(context)).errors;
  },
  async screenshot({ context, path }) {
    await (await tab(context)).page.screenshot({ path, fullPage: true });
  },
};

async function main() {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  process.stdout.write(JSON.stringify({ ready: browser.version() }) + "\n");
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const { id, cmd, ...args } = JSON.parse(line);
    let answer;
    try {
      answer = { id, ok: true, value: await commands[cmd](args) };
    } catch (error) {
      answer = { id, ok: false, error: String(error && error.stack ? error.stack : error) };
    }
    process.stdout.write(JSON.stringify(answer) + "\n");
  }
  await browser.close();
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error) + "\n");
  process.exit(1);
});
