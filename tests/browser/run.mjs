// Headless Chromium (Debian's, driven by playwright-core) opening pages that
// hold EventSources to sse-notify. Driven by tests/browser.rs.
//
//   node tests/browser/run.mjs PAGE_URL [PAGE_URL...]
//
// Each PAGE_URL is opened in its own tab (tests/browser/page.html with its
// query string naming the stream URL, the EventSources to open and the event
// names to listen to). Every event a page reports is printed on stdout as one
// JSON line {"page": <index>, "tab": ..., "type": ..., "data": ..., ...};
// so are {"type": "ready"} once every page is loaded, and "console",
// "pageerror" and "fatal" lines. It takes commands on stdin (below) and runs
// until its stdin closes, then closes the browser and exits 0.
//
// The browser: CHROMIUM (env) or /usr/bin/chromium; playwright never
// downloads one of its own here.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const pages = process.argv.slice(2);
if (pages.length === 0) {
  console.error("usage: node run.mjs PAGE_URL [PAGE_URL...]");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

const userDataDir = mkdtempSync(join(tmpdir(), "sse-notify-chromium-"));
let context;
let closing = false;

async function shutdown(code) {
  if (closing) return;
  closing = true;
  try {
    if (context) await context.close();
  } catch (e) {
    // the browser may already be gone
  }
  rmSync(userDataDir, { recursive: true, force: true });
  process.exit(code);
}

// A hard bound, whatever happens: the Rust test bounds it too.
setTimeout(() => {
  out({ type: "fatal", message: "run.mjs: 120 s limit reached" });
  shutdown(3);
}, 120_000).unref();

// Commands on stdin, one JSON object a line:
// - {"page": N, "eval": "js"} runs the expression in that page and prints
//   {"type": "evaluated", "page", "result"};
// - {"page": N, "delay": {"tab": "A", "ms": 800}} holds the next request of
//   that tab's EventSource (its reconnection) for that long before letting
//   it go to the network unchanged, and prints {"type": "armed"} and then
//   {"type": "delayed", "tab", "url"} when it holds one.
const opened = [];
let buffered = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => {
  buffered += chunk;
  let nl;
  while ((nl = buffered.indexOf("\n")) >= 0) {
    const line = buffered.slice(0, nl).trim();
    buffered = buffered.slice(nl + 1);
    if (line) runCommand(line);
  }
});
async function runCommand(line) {
  try {
    const cmd = JSON.parse(line);
    const page = opened[cmd.page];
    if (cmd.delay) {
      const { tab, ms } = cmd.delay;
      await page.route(
        (url) => url.searchParams.get("tab") === tab,
        async (route) => {
          // (Chromium adds Last-Event-ID below what playwright shows of the
          // request: the page's lastEventId tells what it sends.)
          out({ page: cmd.page, type: "delayed", tab, url: route.request().url() });
          await new Promise((resolve) => setTimeout(resolve, ms));
          await route.continue();
        },
        { times: 1 },
      );
      out({ page: cmd.page, type: "armed", tab });
      return;
    }
    const result = await page.evaluate(cmd.eval);
    out({ type: "evaluated", page: cmd.page, result: result ?? null });
  } catch (e) {
    out({ type: "fatal", message: `command ${line}: ${e}` });
  }
}
process.stdin.on("end", () => shutdown(0));
process.stdin.on("error", () => shutdown(0));
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => shutdown(0));

try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
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
  for (const [index, url] of pages.entries()) {
    const page = index === 0 && context.pages().length > 0 ? context.pages()[0] : await context.newPage();
    await page.exposeFunction("sseReport", (ev) => out({ page: index, ...ev }));
    page.on("console", (m) => out({ page: index, type: "console", text: m.text() }));
    page.on("pageerror", (e) => out({ page: index, type: "pageerror", text: String(e) }));
    await page.goto(url, { waitUntil: "load" });
    opened.push(page);
  }
  out({ type: "ready", userAgent: await opened[0].evaluate(() => navigator.userAgent) });
} catch (e) {
  out({ type: "fatal", message: String(e && e.stack ? e.stack : e) });
  await shutdown(1);
}
