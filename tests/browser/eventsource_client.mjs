// The npm `eventsource` package (a WHATWG-conformant EventSource for Node)
// on sse-notify's stream. Driven by tests/clients.rs.
//
//   node tests/browser/eventsource_client.mjs STREAM_URL USER [EVENT_NAME,...]
//
// Identity: `X-Remote-User: USER` (header auth from loopback), set through
// the package's `fetch` option. Listens to connection_established, message,
// history_gap, evicted and the EVENT_NAMEs, and prints one JSON line per
// event: {"type", "data", "lastEventId", "readyState"}; also "open" and
// "error" lines. Reconnection (after `retry:` ms, with Last-Event-ID) is the
// package's own. Runs until stdin closes.
import { EventSource } from "eventsource";

const [url, user, extra = ""] = process.argv.slice(2);
if (!url || !user) {
  console.error("usage: node eventsource_client.mjs STREAM_URL USER [EVENT_NAME,...]");
  process.exit(2);
}

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

const es = new EventSource(url, {
  fetch: (input, init) =>
    fetch(input, { ...init, headers: { ...init.headers, "X-Remote-User": user } }),
});

const names = new Set(["connection_established", "message", "history_gap", "evicted"]);
for (const n of extra.split(",").filter(Boolean)) names.add(n);
for (const name of names) {
  es.addEventListener(name, (e) =>
    out({ type: name, data: e.data, lastEventId: e.lastEventId, readyState: es.readyState }),
  );
}
es.onopen = () => out({ type: "open", readyState: es.readyState });
es.onerror = (e) =>
  out({ type: "error", message: e.message ?? null, code: e.code ?? null, readyState: es.readyState });

function stop(code) {
  es.close();
  process.exit(code);
}
setTimeout(() => {
  out({ type: "fatal", message: "eventsource_client.mjs: 120 s limit reached" });
  stop(3);
}, 120_000).unref();
process.stdin.on("end", () => stop(0));
process.stdin.on("error", () => stop(0));
process.stdin.resume();
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => stop(0));
