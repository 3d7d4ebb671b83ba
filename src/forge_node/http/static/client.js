/*
 * ForgeLive: live queries and job progress from a forge-node gateway, in the browser.
 * No dependencies and no build step:
 *
 *   <script src="/_api/client.js"></script>
 *   const live = new ForgeLive({ baseUrl: "", getToken: async () => jwtOrNull });
 *   const stop = live.subscribe("list_notes", {}, (notes) => show(notes), (err) => warn(err));
 *   live.subscribeJob(jobId, (job) => progress(job.status, job.progress));
 *
 * How it talks to the gateway (src/forge_node/http/resources/events.py):
 * - GET /_api/events opens a stream, which is a session; its first event, `connected`, names
 *   the session. EventSource cannot send headers, and a token in a URL ends up in logs and
 *   history, so with a token the stream is opened with a one-use ticket instead.
 * - Each subscription is a POST that names the session and an id; its updates arrive on the
 *   stream as `result`, `error` or `job` events carrying that id.
 * - A session lives as long as its stream. When the stream breaks, or its node drains (a
 *   `shutdown` event), a new stream is opened after a backoff and everything is subscribed
 *   again in the new session.
 * - A subscription refused by the server stays here and is sent again after a reconnect;
 *   call the function that subscribe() returned to drop it for good.
 */
(function (global) {
  "use strict";

  const FIRST_RETRY_MS = 500;
  const MAX_RETRY_MS = 30000;
  // the server ends a job's subscription itself once the job reaches one of these
  const FINAL_JOB_STATES = new Set(["completed", "dead", "cancelled"]);

  /** An error as the gateway reports it: a stable `code` and a `message`. */
  class LiveError extends Error {
    constructor(code, message) {
      super(message);
      this.code = code;
    }
  }

  class ForgeLive {
    /**
     * @param {object} [options]
     * @param {string} [options.baseUrl] the gateway's origin; "" for the page's own
     * @param {() => Promise<string|null>} [options.getToken] a valid JWT, or null if signed out
     * @param {(status: string) => void} [options.onStatus] "connecting", "live",
     *     "reconnecting" or "closed"
     */
    constructor({ baseUrl = "", getToken = null, onStatus = null } = {}) {
      this.baseUrl = baseUrl.replace(/\/+$/, "");
      this.getToken = getToken || (async () => null);
      this.onStatus = onStatus || (() => {});
      this.watches = new Map(); // subscription id -> watch
      this.lastId = 0;
      this.source = null;
      this.sessionId = null; // set from `connected` until the stream ends
      this.failures = 0; // connections in a row that did not reach `connected`
      this.retryTimer = null;
      this.closed = false;
      this.onStatus("connecting");
      this.connect();
    }

    /** Follow a live query: onResult(data) now and after every change that alters it. */
    subscribe(name, args, onResult, onError) {
      return this.watch("/_api/subscribe", { function: name, args: args || {} }, {
        result: (event) => onResult(event.data),
        error: (event) => onError && onError(event.error),
        // a query's own errors leave it subscribed; the server marks those that end it
        ends: (kind, event) => kind === "error" && event.ended === true,
      });
    }

    /** Follow a job: onUpdate({job_id, status, attempts, progress, progress_message}). */
    subscribeJob(jobId, onUpdate, onError) {
      return this.watch("/_api/subscribe-job", { job_id: jobId }, {
        job: (event) => onUpdate(event),
        error: (event) => onError && onError(event.error),
        ends: (kind, event) => (kind === "error" ? event.ended === true
          : FINAL_JOB_STATES.has(event.status)),
      });
    }

    /** End every subscription and the stream. */
    close() {
      this.closed = true;
      clearTimeout(this.retryTimer);
      this.dropStream();
      this.watches.clear();
      this.onStatus("closed");
    }

    // -- the stream ---------------------------------------------------------------------

    async connect() {
      this.retryTimer = null;
      let url = `${this.baseUrl}/_api/events`;
      try {
        const token = await this.getToken();
        if (token) {
          const { ticket } = await this.post("/_api/events/ticket", {}, token);
          url += `?ticket=${encodeURIComponent(ticket)}`;
        }
      } catch (error) {
        this.reconnect();
        return;
      }
      if (this.closed) return;
      const source = (this.source = new EventSource(url));
      source.addEventListener("connected", (event) => {
        this.failures = 0;
        this.sessionId = JSON.parse(event.data).session_id;
        this.onStatus("live");
        for (const watch of this.watches.values()) this.send(watch);
      });
      source.addEventListener("result", (event) => this.dispatch("result", event));
      source.addEventListener("job", (event) => this.dispatch("job", event));
      source.addEventListener("shutdown", () => this.reconnect());
      // The server's `error` events and EventSource's own failures share the name "error":
      // only the server's carry data.
      source.addEventListener("error", (event) => {
        if (event.data === undefined) this.reconnect();
        else this.dispatch("error", event);
      });
    }

    /** Drop the stream and open a new one later. EventSource would retry by itself, but with
     * the same (used) ticket, at a fixed pace, and into a session that no longer exists. */
    reconnect() {
      this.dropStream();
      if (this.closed || this.retryTimer !== null) return;
      this.onStatus("reconnecting");
      // exponential backoff with full jitter: the clients of a node that went away come
      // back spread over the whole window, not all at once
      const ceiling = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** this.failures);
      this.failures += 1;
      this.retryTimer = setTimeout(() => this.connect(), Math.random() * ceiling);
    }

    dropStream() {
      if (this.source) this.source.close();
      this.source = null;
      this.sessionId = null;
    }

    dispatch(kind, event) {
      const data = JSON.parse(event.data);
      const watch = this.watches.get(data.id);
      if (!watch) return; // dropped here while the event was on its way
      if (kind === "error" && data.ended && data.error.code === "UNAUTHORIZED"
          && !watch.renewing) {
        // The subscription's token expired and the server ended it: subscribe again with a
        // fresh token. Once only until it works again, in case getToken hands back the
        // expired one, which would otherwise loop.
        watch.renewing = true;
        this.send(watch);
        return;
      }
      if (kind !== "error") watch.renewing = false;
      if (watch.ends(kind, data)) this.watches.delete(watch.id);
      const handler = watch[kind];
      if (handler) handler(data);
    }

    // -- subscriptions --------------------------------------------------------------------

    watch(path, body, handlers) {
      const watch = { id: `w${++this.lastId}`, path, body, renewing: false, ...handlers };
      this.watches.set(watch.id, watch);
      if (this.sessionId) this.send(watch); // else `connected` sends it
      return () => this.unwatch(watch);
    }

    async send(watch) {
      const sessionId = this.sessionId;
      try {
        const token = await this.getToken();
        await this.post(watch.path, { session_id: sessionId, id: watch.id, ...watch.body }, token);
      } catch (error) {
        // an answer about a session that has since ended does not matter: the next one
        // sends every subscription again
        if (sessionId !== this.sessionId || this.watches.get(watch.id) !== watch) return;
        if (error.code === "SESSION_NOT_FOUND") this.reconnect(); // the stream is gone
        else watch.error({ id: watch.id, error });
      }
    }

    async unwatch(watch) {
      if (this.watches.get(watch.id) !== watch) return;
      this.watches.delete(watch.id);
      const sessionId = this.sessionId;
      if (!sessionId) return;
      try {
        const token = await this.getToken();
        await this.post("/_api/unsubscribe", { session_id: sessionId, id: watch.id }, token);
      } catch (error) {
        // nothing to do: its events are ignored here, and the session's end removes it
      }
    }

    /** POST a JSON body; the answer's `data`, or a LiveError with the gateway's code. */
    async post(path, body, token) {
      const headers = { "content-type": "application/json" };
      if (token) headers.authorization = `Bearer ${token}`;
      let response;
      try {
        response = await fetch(this.baseUrl + path, {
          method: "POST", headers, body: JSON.stringify(body),
        });
      } catch (error) {
        throw new LiveError("NETWORK_ERROR", String(error));
      }
      const answer = await response.json().catch(() => null);
      if (!response.ok || !answer || !answer.success) {
        const error = answer && answer.error;
        throw error ? new LiveError(error.code, error.message)
          : new LiveError(`HTTP_${response.status}`, `${path} answered ${response.status}`);
      }
      return answer.data;
    }
  }

  ForgeLive.LiveError = LiveError;
  global.ForgeLive = ForgeLive;
})(typeof window !== "undefined" ? window : globalThis);
