/*! sse-notify.js: the page side of sse-notify (served by the Django app
 * "sse_notify" as {% static "sse_notify/sse-notify.js" %}). No dependencies.
 *
 *   const sse = SSENotify.connect({
 *     url: "/notifications/stream/",          // through nginx (the default)
 *     topics: ["doc:42"],                      // optional: ?topics=doc:42
 *     tokenUrl: "/notifications/sse-token/",   // token mode only
 *     on: { message(data) {...}, new_comment(data, event) {...} },
 *     onConnected(info) {},    // {connection_id, username, connection_time, ...}
 *     onEvicted(data) {},      // too many tabs: this one was dropped (not reopened)
 *     onHistoryGap(data) {},   // messages may have been missed: reload what the page shows
 *     onStateChange(state) {}, // "connecting", "open", "closed", "evicted"
 *   });
 *   sse.connectionId   // this tab's connection_id (null until connected)
 *   sse.on("other_event", fn); sse.close();
 *
 * What it does beyond a bare EventSource:
 * - a stream the browser gave up on (a refusal such as 401, 502 or 503
 *   ends an EventSource for good) is opened again after a growing, jittered
 *   delay (reconnect.min to reconnect.max ms), with the last event id so
 *   the daemon replays what was missed;
 * - `evicted` closes the tab's stream for good (reopening it would evict
 *   another tab in turn);
 * - token mode: a token is fetched from tokenUrl ({"token", "expires_in"});
 *   before it expires (renewBefore seconds) a fresh one is fetched and the
 *   stream reopened with it and the last event id, so nothing is missed; a
 *   `token_expired` event (the daemon's, at exp) does the same at once.
 */
(function (root) {
  "use strict";

  function parse(text) {
    try {
      return JSON.parse(text);
    } catch (e) {
      return text;
    }
  }

  function withParams(url, params) {
    var parts = [];
    for (var key in params) {
      if (params[key] !== undefined && params[key] !== null && params[key] !== "") {
        parts.push(encodeURIComponent(key) + "=" + encodeURIComponent(params[key]));
      }
    }
    if (!parts.length) return url;
    return url + (url.indexOf("?") >= 0 ? "&" : "?") + parts.join("&");
  }

  function Stream(options) {
    options = options || {};
    this.options = options;
    this.url = options.url || "/notifications/stream/";
    this.topics = Array.isArray(options.topics) ? options.topics.join(",") : options.topics || "";
    this.handlers = {};
    this.connectionId = null;
    this.username = null;
    this.lastEventId = options.lastEventId || "";
    this.state = "connecting";
    this.source = null;
    this.closed = false;
    this.failures = 0;
    this.timer = null;
    this.renewTimer = null;
    var on = options.on || {};
    for (var name in on) this.on(name, on[name]);
    this.open();
  }

  Stream.prototype.on = function (event, handler) {
    var list = this.handlers[event];
    if (!list) {
      list = this.handlers[event] = [];
      if (this.source) this.listen(this.source, event);
    }
    list.push(handler);
    return this;
  };

  Stream.prototype.setState = function (state, detail) {
    if (this.state === state) return;
    this.state = state;
    if (this.options.onStateChange) this.options.onStateChange(state, detail);
  };

  Stream.prototype.listen = function (source, event) {
    var self = this;
    source.addEventListener(event, function (e) {
      if (source !== self.source) return; // a stream being replaced
      if (e.lastEventId) self.lastEventId = e.lastEventId;
      var data = parse(e.data);
      var list = self.handlers[event] || [];
      for (var i = 0; i < list.length; i++) list[i].call(self, data, e);
    });
  };

  // The URL of the next stream: topics, the token, the last event id.
  Stream.prototype.streamUrl = function (token) {
    return withParams(this.url, {
      topics: this.topics,
      token: token,
      last_event_id: this.lastEventId,
      // The stream this one takes over: at the per-user limit the daemon
      // closes that one, not another tab of the user.
      replaces: this.connectionId,
    });
  };

  Stream.prototype.open = function () {
    var self = this;
    if (this.closed) return;
    this.setState("connecting");
    if (!this.options.tokenUrl) {
      this.start(this.streamUrl());
      return;
    }
    this.fetchToken().then(
      function (answer) {
        if (self.closed) return;
        self.start(self.streamUrl(answer.token));
        self.scheduleRenewal(answer);
      },
      function (error) {
        self.failed(error);
      }
    );
  };

  Stream.prototype.fetchToken = function () {
    return fetch(this.options.tokenUrl, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      cache: "no-store",
    }).then(function (response) {
      if (!response.ok) throw new Error("token: HTTP " + response.status);
      return response.json();
    });
  };

  Stream.prototype.scheduleRenewal = function (answer) {
    var self = this;
    clearTimeout(this.renewTimer);
    var lifetime = Number(answer.expires_in);
    if (!(lifetime > 0)) lifetime = Number(answer.exp) - Date.now() / 1000;
    if (!(lifetime > 0)) return;
    var before = this.options.renewBefore;
    if (before === undefined) before = Math.min(30, lifetime / 4);
    this.renewTimer = setTimeout(function () {
      self.renew();
    }, Math.max(lifetime - before, 1) * 1000);
  };

  // Token mode: a fresh token, then the stream reopened with it and the
  // last event id (the daemon replays what came in between).
  Stream.prototype.renew = function () {
    var self = this;
    if (this.closed || this.renewing) return;
    this.renewing = true;
    clearTimeout(this.renewTimer);
    this.fetchToken().then(
      function (answer) {
        self.renewing = false;
        if (self.closed) return;
        self.start(self.streamUrl(answer.token));
        self.scheduleRenewal(answer);
      },
      function (error) {
        self.renewing = false;
        // Keep the current stream while it lasts; when it ends the
        // reconnection path fetches a token again.
        if (self.options.onError) self.options.onError(error);
        self.renewTimer = setTimeout(function () {
          self.renew();
        }, self.backoff());
      }
    );
  };

  Stream.prototype.start = function (url) {
    var self = this;
    var old = this.source;
    var source = new EventSource(url, { withCredentials: !!this.options.withCredentials });
    this.source = source;
    if (old) old.close();
    source.addEventListener("connection_established", function (e) {
      if (source !== self.source) return;
      var info = parse(e.data);
      self.connectionId = info.connection_id;
      self.username = info.username;
      self.failures = 0;
      self.setState("open");
      if (self.options.onConnected) self.options.onConnected(info);
    });
    source.addEventListener("evicted", function (e) {
      if (source !== self.source) return;
      source.close();
      self.closed = true;
      self.clearTimers();
      self.setState("evicted");
      if (self.options.onEvicted) self.options.onEvicted(parse(e.data));
    });
    source.addEventListener("history_gap", function (e) {
      if (source !== self.source) return;
      if (self.options.onHistoryGap) self.options.onHistoryGap(parse(e.data));
    });
    source.addEventListener("token_expired", function () {
      if (source !== self.source) return;
      // The daemon closes the stream now; the browser's own reconnection
      // would present the expired token.
      source.close();
      self.setState("connecting");
      self.renew();
    });
    source.onerror = function (e) {
      // (During a renewal the stream being replaced may end: the renewal
      // opens the next one.)
      if (source !== self.source || self.closed || self.renewing) return;
      if (source.readyState === EventSource.CLOSED) {
        self.failed(e);
      } else {
        // The browser reconnects by itself (after the daemon's retry:),
        // sending Last-Event-ID.
        self.setState("connecting");
      }
    };
    // The page's own handlers (built-in event names too, after the above).
    for (var event in this.handlers) this.listen(source, event);
  };

  Stream.prototype.backoff = function () {
    var reconnect = this.options.reconnect || {};
    var min = reconnect.min || 1000;
    var max = reconnect.max || 60000;
    var delay = Math.min(max, min * Math.pow(2, Math.min(this.failures, 16)));
    return delay / 2 + Math.random() * (delay / 2);
  };

  // The stream could not be opened (or was refused): open it again later.
  Stream.prototype.failed = function (error) {
    var self = this;
    if (this.closed) return;
    if (this.source) {
      this.source.close();
      this.source = null;
    }
    this.connectionId = null;
    this.setState("closed", error);
    if (this.options.onError) this.options.onError(error);
    if (this.options.reconnect === false) return;
    var delay = this.backoff();
    this.failures += 1;
    clearTimeout(this.timer);
    this.timer = setTimeout(function () {
      self.open();
    }, delay);
  };

  Stream.prototype.clearTimers = function () {
    clearTimeout(this.timer);
    clearTimeout(this.renewTimer);
  };

  Stream.prototype.close = function () {
    this.closed = true;
    this.clearTimers();
    if (this.source) this.source.close();
    this.source = null;
    this.connectionId = null;
    this.setState("closed");
  };

  var SSENotify = {
    connect: function (options) {
      return new Stream(options);
    },
    Stream: Stream,
  };

  if (typeof module === "object" && module.exports) module.exports = SSENotify;
  else root.SSENotify = SSENotify;
})(typeof self !== "undefined" ? self : this);
