// Headless Chromium (Debian's, driven by playwright-core) as a person using
// the example Django site of clients/python/example. Driven by
// tests/django_e2e.rs.
//
//   node tests/browser/django_site.mjs
//
// Commands on stdin, one JSON object a line; each answers one line
// {"type": "done", "op": ..., "result": ...} (or {"type": "fatal"}):
// - {"op": "context", "name": "alice"}: a new browser context (its own
//   cookies: a browser profile);
// - {"op": "open", "context": "alice", "tab": "A", "url": "..."}: a new tab;
// - {"op": "login", "tab": "A", "username": "...", "password": "..."}: fills
//   and submits the login form shown in that tab;
// - {"op": "click", "tab": "A", "selector": "#notify-all"};
// - {"op": "eval", "tab": "A", "js": "..."}: the expression's value;
// - {"op": "delay", "tab": "A", "ms": 1500}: holds the tab's next stream
//   request that long (printing {"type": "delayed", "url"} when it does).
// Meanwhile, what each tab shows (its URL, the stream state and connection
// id, the notifications listed) is printed whenever it changes, as
// {"type": "shown", "tab": "A", "url", "state", "connectionId", "notes":
// [{"id", "text"}]}. It runs until its stdin closes, then closes the
// browser and exits 0.
import { chromium } from "playwright-core";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

let browser;
const contexts = {};
const tabs = {};
const lastShown = {};
let closing = false;

async function shutdown(code) {
  if (closing) return;
  closing = true;
  try {
    if (browser) await browser.close();
  } catch (e) {
    // already gone
  }
  process.exit(code);
}

setTimeout(() => {
  out({ type: "fatal", message: "django_site.mjs: 150 s limit reached" });
  shutdown(3);
}, 150_000).unref();

// What a person sees in the tab.
const SHOWN = `(() => ({
  url: location.pathname + location.search,
  state: document.getElementById("state")?.textContent ?? null,
  connectionId: document.getElementById("connection-id")?.textContent || null,
  notes: [...document.querySelectorAll("#notes li")].map((li) => ({ id: li.dataset.id || null, text: li.textContent })),
}))()`;

async function watch() {
  while (!closing) {
    for (const [name, page] of Object.entries(tabs)) {
      try {
        const shown = await page.evaluate(SHOWN);
        const text = JSON.stringify(shown);
        if (text !== lastShown[name]) {
          lastShown[name] = text;
          out({ type: "shown", tab: name, ...shown });
        }
      } catch (e) {
        // navigating: the next round sees the new page
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function run(cmd) {
  switch (cmd.op) {
    case "context":
      contexts[cmd.name] = await browser.newContext();
      return null;
    case "open": {
      const page = await contexts[cmd.context].newPage();
      page.on("pageerror", (e) => out({ type: "pageerror", tab: cmd.tab, text: String(e) }));
      page.on("console", (m) => out({ type: "console", tab: cmd.tab, text: m.text() }));
      const response = await page.goto(cmd.url, { waitUntil: "load" });
      tabs[cmd.tab] = page;
      return { status: response ? response.status() : null, url: page.url() };
    }
    case "login": {
      const page = tabs[cmd.tab];
      await page.fill("#id_username", cmd.username);
      await page.fill("#id_password", cmd.password);
      await Promise.all([page.waitForNavigation({ waitUntil: "load" }), page.click("#login button")]);
      return { url: page.url() };
    }
    case "click": {
      const page = tabs[cmd.tab];
      if (cmd.navigates) {
        await Promise.all([page.waitForNavigation({ waitUntil: "load" }), page.click(cmd.selector)]);
      } else {
        await page.click(cmd.selector);
      }
      return { url: page.url() };
    }
    case "eval":
      return await tabs[cmd.tab].evaluate(cmd.js);
    case "delay":
      // Holds the tab's next stream request for cmd.ms, then lets it go
      // unchanged; prints {"type": "delayed"} when it holds one.
      await tabs[cmd.tab].route(
        (url) => url.pathname.endsWith("/notifications/stream/"),
        async (route) => {
          out({ type: "delayed", tab: cmd.tab, url: route.request().url() });
          await new Promise((resolve) => setTimeout(resolve, cmd.ms));
          await route.continue();
        },
        { times: 1 },
      );
      return null;
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

let buffered = "";
let queue = Promise.resolve();
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => {
  buffered += chunk;
  let nl;
  while ((nl = buffered.indexOf("\n")) >= 0) {
    const line = buffered.slice(0, nl).trim();
    buffered = buffered.slice(nl + 1);
    if (!line) continue;
    // One command at a time, in order.
    queue = queue.then(async () => {
      try {
        const cmd = JSON.parse(line);
        out({ type: "done", op: cmd.op, tab: cmd.tab, result: (await run(cmd)) ?? null });
      } catch (e) {
        out({ type: "fatal", message: `command ${line}: ${e && e.stack ? e.stack : e}` });
      }
    });
  }
});
process.stdin.on("end", () => queue.then(() => shutdown(0)));
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => shutdown(0));

try {
  browser = await chromium.launch({
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
  out({ type: "ready" });
  watch();
} catch (e) {
  out({ type: "fatal", message: String(e && e.stack ? e.stack : e) });
  await shutdown(1);
}
