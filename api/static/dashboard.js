// The dashboard: polls GET ui/overview every 2 s and renders it; looks jobs up and retries
// failed callbacks. Plain DOM, no framework; data is only ever set as text, never as HTML.
"use strict";

(() => {
  const POLL_MS = 2000;
  const KEY_STORAGE = "downloader.apiKey";
  const ROLES = ["api", "worker", "notifier", "operator"];
  const $ = (id) => document.getElementById(id);
  const view = { data: null, sortKey: "pending", sortDir: -1, filter: "" };
  let timer = null;

  class KeyNeeded extends Error {}

  // --- talking to the API --------------------------------------------------------------

  async function call(path, options = {}) {
    const key = sessionStorage.getItem(KEY_STORAGE);
    const headers = key ? { Authorization: `Bearer ${key}` } : {};
    const resp = await fetch(path, { ...options, headers, cache: "no-store" });
    if (resp.status === 401) {
      askForKey(key ? "That key was refused; enter another one." : null);
      throw new KeyNeeded();
    }
    return resp;
  }

  function askForKey(message) {
    sessionStorage.removeItem(KEY_STORAGE);
    clearTimeout(timer);
    if (message) $("key-message").textContent = message;
    $("key-form").hidden = false;
    $("dashboard").hidden = true;
    setStatus("Waiting for an API key");
    $("key-input").focus();
  }

  function useKey(event) {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("key-input").value.trim());
    $("key-input").value = "";
    $("key-form").hidden = true;
    $("dashboard").hidden = false;
    refresh();
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const resp = await call("ui/overview");
      if (!resp.ok) throw new Error(`the overview answered ${resp.status}`);
      view.data = await resp.json();
      render();
      refreshHosts();
      setStatus(`Updated ${new Date().toLocaleTimeString()}`);
    } catch (err) {
      if (err instanceof KeyNeeded) return; // polling resumes once a key is given
      setStatus(`Cannot reach the API (${err.message}); retrying`, true);
    }
    timer = setTimeout(refresh, POLL_MS);
  }

  // --- small helpers ----------------------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (name === "text") node.textContent = value;
      else if (name === "onclick") node.addEventListener("click", value);
      else node.setAttribute(name, value);
    }
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }

  function setStatus(text, isError = false) {
    $("status").textContent = text;
    $("status").classList.toggle("error", isError);
  }

  const fmtInt = (n) => (n === null || n === undefined ? "–" : n.toLocaleString());
  const fmtTime = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
  const isToday = (date) => date.toDateString() === new Date().toDateString();
  const fmtWhen = (iso) => (iso && isToday(new Date(iso)) ? new Date(iso).toLocaleTimeString() : fmtTime(iso));
  const fmtRate = (r) => (r === null ? "–" : `${(r * 100).toFixed(r < 0.1 ? 1 : 0)}%`);
  // Latencies are histogram bucket bounds: "at most" this long.
  const fmtLatency = (s) => (s === null || s === undefined ? "–" : `≤ ${fmtDuration(s)}`);
  const SVG = "http://www.w3.org/2000/svg";

  function fmtDuration(seconds) {
    if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
    if (seconds < 90) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
    return `${Math.round(seconds / 86400)} d`;
  }

  // --- rendering the overview ----------------------------------------------------------

  function render() {
    const d = view.data;
    $("version").textContent = `v${d.version}`;
    for (const span of document.querySelectorAll(".series-span")) span.textContent = `(${d.series_minutes} min)`;
    for (const span of document.querySelectorAll(".window-span")) span.textContent = `(${d.window_minutes} min)`;
    renderTotals(d.totals);
    renderSparkline(d.series);
    renderInstances(d.instances, d.operator_expected);
    renderAggregations();
    renderLatency(d.aggregation_series || []);
    renderCallbackHosts(d.callback_hosts, d.callback_hosts_sampled);
    renderFailures(d.recent_failures);
  }

  function renderTotals(t) {
    $("t-pending").textContent = fmtInt(t.pending);
    $("t-in-flight").textContent = fmtInt(t.in_flight);
    $("t-callbacks").textContent = fmtInt(t.callbacks_queued);
    $("t-succeeded").textContent = fmtInt(t.succeeded);
    $("t-failed").textContent = fmtInt(t.failed);
    $("t-failed").classList.toggle("bad", t.failed > 0);
    $("t-rate").textContent = t.jobs_per_minute.toLocaleString();
  }

  function renderSparkline(series) {
    const svg = $("sparkline");
    const totals = series.map((p) => p.succeeded + p.failed);
    const top = Math.max(1, ...totals);
    const line = (values, cls) => {
      const step = 300 / Math.max(1, values.length - 1);
      const points = values.map((v, i) => `${(i * step).toFixed(1)},${(46 - (v / top) * 44).toFixed(1)}`);
      const poly = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
      poly.setAttribute("points", points.join(" "));
      poly.setAttribute("class", cls);
      return poly;
    };
    svg.replaceChildren($("spark-title"), line(totals, "all"), line(series.map((p) => p.failed), "failed"));
    const last = totals[totals.length - 1] || 0;
    $("spark-title").textContent =
      `Finished jobs per minute, last ${series.length} minutes: peak ${top === 1 && !last ? 0 : top}, this minute ${last}`;
  }

  function renderInstances(instances, operatorExpected) {
    const cards = ROLES.map((role) => {
      const list = instances[role] || [];
      // No operator is expected outside Kubernetes (`downloader up`, plain processes): its
      // empty card is then neutral, not a warning.
      const expected = role !== "operator" || operatorExpected;
      const items = list.map((i) =>
        el("li", { text: `${i.host} · pid ${i.pid} · v${i.version} · up ${fmtDuration(i.uptime_seconds)}`,
                   title: `instance ${i.id}, last heartbeat ${fmtDuration(i.last_seen_seconds)} ago` }));
      const heading = el("h3", { text: `${role} (${list.length})` });
      const empty = expected ? "none running" : "none running (none expected here)";
      const body = items.length ? el("ul", {}, ...items) : el("p", { class: "muted", text: empty });
      const state = list.length ? "" : expected ? " none" : " unexpected";
      return el("div", { class: `role${state}`, "data-role": role }, heading, body);
    });
    $("instances").replaceChildren(...cards);
  }

  function compare(a, b) {
    const x = a[view.sortKey], y = b[view.sortKey];
    if (x === y) return a.id < b.id ? -1 : 1;
    if (x === null) return 1; // no data sorts last either way
    if (y === null) return -1;
    return (x < y ? -1 : 1) * view.sortDir;
  }

  function renderAggregations() {
    const d = view.data;
    const needle = view.filter.toLowerCase();
    const rows = d.aggregations.filter((a) => a.id.toLowerCase().includes(needle)).sort(compare);
    $("aggr-table").tBodies[0].replaceChildren(...rows.map((a) => el("tr", { "data-aggr": a.id },
      el("td", { class: "id" }, a.id, a.paused ? el("span", { class: "badge", text: "paused" }) : null),
      el("td", { class: "num", text: fmtInt(a.limit) }),
      el("td", { class: "num", text: fmtInt(a.pending) }),
      el("td", { class: "num", text: fmtInt(a.in_flight) }),
      el("td", { class: "num", text: a.jobs_per_minute.toLocaleString() }),
      el("td", { class: `num${a.error_rate > 0.1 ? " bad" : ""}`, text: fmtRate(a.error_rate) }),
      el("td", { class: "num latency", text: fmtLatency(a.latency_p50) }),
      el("td", { class: "num latency", text: fmtLatency(a.latency_p95) }),
    )));
    let note = `${rows.length} shown of ${d.totals.aggregations} with queued, running or recent jobs`;
    if (d.totals.aggregations > d.aggregations.length) {
      note += `; only the ${d.aggregations_cap} largest backlogs are listed`;
    }
    $("aggr-note").textContent = `${note}. Rates over the last ${d.window_minutes} minutes.`;
    for (const th of document.querySelectorAll("#aggr-table th")) {
      const sorted = th.dataset.key === view.sortKey;
      th.setAttribute("aria-sort", sorted ? (view.sortDir > 0 ? "ascending" : "descending") : "none");
    }
  }

  function sortBy(key) {
    // Names read best A-Z; numbers largest first.
    view.sortDir = key === view.sortKey ? -view.sortDir : key === "id" ? 1 : -1;
    view.sortKey = key;
    if (view.data) renderAggregations();
  }

  function renderFailures(failures) {
    const rows = failures.map((f) => el("tr", {},
      el("td", { text: fmtWhen(f.at) }),
      el("td", { class: "id", text: f.aggr_id }),
      el("td", {}, el("button", { type: "button", class: "link", text: f.job_id, title: "Look this job up",
                                  onclick: () => lookup(f.job_id) })),
      el("td", { class: "num", text: f.response_code || "–" }),
      el("td", { text: f.reason || "–", title: f.phase || "" }),
      el("td", { class: "error", text: f.error, title: f.url }),
    ));
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "6", class: "muted", text: "No failures recorded." })));
    $("failures-table").tBodies[0].replaceChildren(...rows);
  }

  // --- the Hosts card: politeness per origin host --------------------------------------

  async function refreshHosts() {
    try {
      const resp = await call("ui/hosts");
      if (resp.ok) renderHosts(await resp.json());
    } catch (err) {
      // the overview's status line already says when the API cannot be reached
    }
  }

  function renderHosts(d) {
    const limitText = (h) => {
      const parts = [h.limit === null ? "∞" : fmtInt(h.limit)];
      if (h.requests_per_second !== null) parts.push(`${h.requests_per_second}/s`);
      return parts.join(" · ");
    };
    const pausedText = (iso) => {
      const left = iso ? (new Date(iso).getTime() - Date.now()) / 1000 : 0;
      return left > 0 ? `${fmtWhen(iso)} (${fmtDuration(left)} left)` : "–";
    };
    const rows = d.hosts.map((h) => el("tr", { "data-host": h.host },
      el("td", { class: "id" }, h.host, h.paused_until ? el("span", { class: "badge", text: "paused" }) : null),
      el("td", { class: `num${h.limit !== null && h.in_flight >= h.limit ? " bad" : ""}`, text: fmtInt(h.in_flight) }),
      el("td", { class: "num", text: limitText(h) }),
      el("td", { text: pausedText(h.paused_until) }),
    ));
    if (!rows.length) {
      const text = d.scoped ? "Hosts are fleet-wide: not shown to a key scoped to some aggregations." : "No host fetched from in the last hour.";
      rows.push(el("tr", {}, el("td", { colspan: "4", class: "muted", text })));
    }
    $("hosts-table").tBodies[0].replaceChildren(...rows);
    $("hosts-note").textContent = d.hosts.length ? `The ${d.hosts.length} busiest hosts of the last hour (at most ${d.cap}).` : "";
  }

  // --- latency and throughput per aggregation, callbacks per destination ------------------

  function svgNode(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    return node;
  }

  function renderLatency(series) {
    const charts = series.map((s) => {
      const n = Math.max(1, s.points.length);
      const width = 300 / n;
      const topJobs = Math.max(1, ...s.points.map((p) => p.finished));
      const known = s.points.filter((p) => p.latency_p95 !== null);
      const topLatency = Math.max(1, ...known.map((p) => p.latency_p95));
      const title = svgNode("title", {});
      const svg = svgNode("svg", { viewBox: "0 0 300 60", preserveAspectRatio: "none", role: "img" });
      svg.append(title);
      s.points.forEach((p, i) => {
        const h = (p.finished / topJobs) * 56;
        const f = (p.failed / topJobs) * 56;
        if (h) svg.append(svgNode("rect", { class: "done", x: (i * width).toFixed(1), y: (58 - h).toFixed(1), width: (width * 0.8).toFixed(1), height: h.toFixed(1) }));
        if (f) svg.append(svgNode("rect", { class: "failed", x: (i * width).toFixed(1), y: (58 - f).toFixed(1), width: (width * 0.8).toFixed(1), height: f.toFixed(1) }));
      });
      const points = s.points.map((p, i) => (p.latency_p95 === null ? null :
        `${(i * width + width * 0.4).toFixed(1)},${(58 - (p.latency_p95 / topLatency) * 54).toFixed(1)}`)).filter((x) => x);
      if (points.length) svg.append(svgNode("polyline", { class: "p95", points: points.join(" ") }));
      const done = s.points.reduce((sum, p) => sum + p.finished, 0);
      const last = known.length ? known[known.length - 1] : null;
      const summary = last ? `latest p50 ${fmtLatency(last.latency_p50)}, p95 ${fmtLatency(last.latency_p95)}` : "no latency recorded";
      title.textContent = `${s.id}: ${done} jobs finished in ${s.points.length} minutes, peak ${topJobs}/min; ${summary}`;
      return el("figure", { class: "multiple", "data-aggr": s.id }, svg,
        el("figcaption", {}, el("strong", { text: s.id }), ` · ${done} finished · ${summary}`,
          known.length ? ` · p95 peak ${fmtLatency(topLatency)}` : ""));
    });
    if (!charts.length) charts.push(el("p", { class: "muted", text: "No aggregation finished jobs recently." }));
    $("latency-charts").replaceChildren(...charts);
  }

  function renderCallbackHosts(hosts, sampled) {
    const card = $("callbacks-card");
    if (hosts === null || hosts === undefined) { // a key scoped to some aggregations
      $("callbacks-note").textContent = "Callbacks are counted by destination for the whole fleet: not shown to a scoped key.";
      $("callbacks-table").tBodies[0].replaceChildren();
      card.dataset.scoped = "true";
      return;
    }
    delete card.dataset.scoped;
    const rows = hosts.map((h) => el("tr", { "data-host": h.host },
      el("td", { class: "id", text: h.host }),
      el("td", { class: "num", text: fmtInt(h.pending) }),
      el("td", { class: `num${h.retried ? " warn" : ""}`, text: fmtInt(h.retried) }),
      el("td", { class: `num${h.failed ? " bad" : ""}`, text: fmtInt(h.failed) }),
    ));
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "4", class: "muted", text: "No callback pending or failed." })));
    $("callbacks-table").tBodies[0].replaceChildren(...rows);
    const minutes = view.data.series_minutes;
    $("callbacks-note").textContent = `Pending: queued or being delivered now${sampled ? " (of the earliest due, a sample)" : ""}; ` +
      `retried and failed attempts: last ${minutes} minutes.`;
  }

  // --- one job -------------------------------------------------------------------------

  async function lookup(id) {
    id = id.trim();
    $("job-id").value = id;
    const out = $("job-result");
    out.replaceChildren(el("p", { class: "muted", text: `Looking up ${id}…` }));
    try {
      const resp = await call(`jobs/${encodeURIComponent(id)}`);
      if (resp.status === 404) return out.replaceChildren(el("p", { text: `No job ${id}: unknown, or delivered and its file deleted.` }));
      if (!resp.ok) return out.replaceChildren(el("p", { class: "bad", text: `Error ${resp.status}: ${await resp.text()}` }));
      out.replaceChildren(...renderJob(await resp.json()));
    } catch (err) {
      if (!(err instanceof KeyNeeded)) out.replaceChildren(el("p", { class: "bad", text: `Lookup failed: ${err.message}` }));
    }
  }

  function renderJob(job) {
    const dl = el("dl", {});
    const row = (name, value) => dl.append(el("dt", { text: name }), el("dd", {}, value));
    row("State", el("span", { class: "state", "data-field": "state", text: job.state }));
    row("Aggregation", job.aggr_id);
    row("URL", job.url);
    const dw = job.download;
    row("Download", `${dw.state || "–"}, ${dw.attempts} attempt(s), response ${dw.response_code || "none"}` +
      (dw.error ? ` — ${dw.error}` : ""));
    const cb = job.callback;
    row("Callback", el("span", { "data-field": "callback", text: `${cb.state || "not yet"}, ${cb.attempts} attempt(s)` +
      (cb.backend ? ` via ${cb.backend} to ${cb.destination}` : "") + (cb.error ? ` — ${cb.error}` : "") }));
    if (dw.sha256) row("File", el("span", { "data-field": "file", text: `${fmtInt(dw.size)} bytes, sha256 ${dw.sha256}` }));
    if (job.crashes) row("Lost workers", String(job.crashes));
    const parts = [dl, el("h3", { text: "Timeline" }), timeline(job)];
    if (job.errors.length) {
      parts.push(el("h3", { text: "Errors" }), el("ol", { class: "errors" }, ...job.errors.map((e) => el("li", { text: e }))));
    }
    if (cb.state === "Failed") parts.push(retryButton(job.id));
    return parts;
  }

  function timeline(job) {
    const at = (iso) => (iso ? new Date(iso).getTime() / 1000 : null);
    const steps = [["Created", job.created_at], ["Started", job.started_at], ["Finished", job.finished_at],
      ["Callback delivered", job.callback.delivered_at], ["Last update", job.updated_at],
      ["Next attempt", job.next_attempt_at], ["Lease expires", job.lease_expires_at]];
    let previous = null;
    const items = steps.filter(([, iso]) => iso).map(([name, iso]) => {
      const since = previous !== null && name !== "Lease expires" ? ` (+${fmtDuration(Math.max(0, at(iso) - previous))})` : "";
      previous = at(iso);
      return el("li", { text: `${name}: ${fmtTime(iso)}${since}` });
    });
    return el("ol", { class: "timeline" }, ...items);
  }

  function retryButton(id) {
    const result = el("span", { role: "status", class: "muted" });
    const button = el("button", { type: "button", id: "retry-callback", text: "Retry callback", onclick: async () => {
      button.disabled = true;
      try {
        const resp = await call(`retry/${encodeURIComponent(id)}`, { method: "POST" });
        if (resp.status === 204) {
          await lookup(id);
          $("job-result").append(el("p", { role: "status", id: "retry-result", text: "Callback rescheduled." }));
          return;
        }
        result.textContent = `Not rescheduled (${resp.status}): ${await resp.text()}`;
      } catch (err) {
        if (!(err instanceof KeyNeeded)) result.textContent = `Retry failed: ${err.message}`;
      }
      button.disabled = false;
    } });
    return el("p", {}, button, " ", result);
  }

  // --- wiring -----------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("key-form").addEventListener("submit", useKey);
    $("job-form").addEventListener("submit", (event) => {
      event.preventDefault();
      lookup($("job-id").value);
    });
    $("aggr-filter").addEventListener("input", (event) => {
      view.filter = event.target.value;
      if (view.data) renderAggregations();
    });
    for (const th of document.querySelectorAll("#aggr-table th")) {
      th.querySelector("button").addEventListener("click", () => sortBy(th.dataset.key));
    }
    refresh();
  });
})();
