// The operator's page: GET /admin/stats (admin scope) every few seconds; locally also Kafka's
// end offsets, which the deployed API cannot read (the mappings' OffsetLag metric has them).
"use strict";

takeTokenFromUrl();

const KAFKA_OFFSETS = "/_local/kafka-offsets";
const state = document.getElementById("state");
const parts = {
  tiles: document.getElementById("tiles"),
  chart: document.getElementById("chart"),
  partitions: document.getElementById("partitions"),
  dead: document.getElementById("dead"),
};

function who() {
  const node = document.getElementById("who");
  if (!token()) return show(node);
  show(node, el("button", { type: "button", class: "link", onclick: () => { signOut(); location.reload(); } }, "Sign out"));
}

function signInNeeded(reason) {
  for (const part of Object.values(parts)) show(part);
  show(
    state,
    el(
      "section",
      { class: "notice", "data-state": "signin" },
      el("h2", {}, "Sign in as an operator"),
      el("p", {}, reason),
      el("p", {}, "Running locally? Open the operator link that ", el("code", {}, "make run"), " prints."),
    ),
  );
}

async function kafkaEndOffsets(signal) {
  try {
    const response = await fetch(CONFIG.apiBase + KAFKA_OFFSETS, { signal });
    return response.ok ? (await response.json()).topics : null;
  } catch (error) {
    if (error.name === "AbortError") throw error;
    return null;
  }
}

function age(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return `${ms} ms`;
  if (ms < 120000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.round(ms / 60000)} min`;
}

function tiles(stats) {
  const since = stats.lastBatchAt ? stats.now - stats.lastBatchAt : null;
  const entries = [
    ["Records applied per second", stats.appliedPerSecond.toLocaleString(), "applied"],
    ["Duplicates skipped (5 min)", stats.totals.duplicates.toLocaleString(), "duplicates"],
    ["Dead letters (5 min)", stats.totals.deadLettered.toLocaleString(), "dead"],
    ["Freshness lag", age(stats.freshnessLagMs), "freshness"],
    ["Last batch", since === null ? "none in 5 min" : `${age(since)} ago`, "last"],
  ];
  show(parts.tiles, entries.map(([label, value, key]) => el("div", { class: "tile", "data-tile": key }, el("dt", {}, label), el("dd", {}, value))));
}

// Freshness lag (line) over records applied (bars), one point per bucket; the same figures
// follow as a table for screen readers and for reading exact values.
function chart(stats) {
  const series = stats.series;
  if (!series.length) return show(parts.chart, empty("No batches in the last five minutes."));
  const width = 640, height = 180, pad = 28;
  const start = stats.now - stats.windowSeconds * 1000;
  const x = (at) => pad + ((at - start) / (stats.windowSeconds * 1000)) * (width - 2 * pad);
  const maxApplied = Math.max(1, ...series.map((b) => b.applied));
  const lags = series.filter((b) => b.maxLagMs !== null);
  const maxLag = Math.max(1, ...lags.map((b) => b.maxLagMs));
  const barWidth = Math.max(2, ((width - 2 * pad) * stats.bucketSeconds) / stats.windowSeconds - 2);
  const svg = (tag, attributes) => {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
    return node;
  };
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", class: "chart", "aria-labelledby": "chart-desc" });
  const desc = svg("title", { id: "chart-desc" });
  desc.textContent = `Worst freshness lag per ${stats.bucketSeconds} s, at most ${age(maxLag)}; records applied per ${stats.bucketSeconds} s, at most ${maxApplied}.`;
  root.append(desc);
  for (const b of series) {
    const h = ((height - 2 * pad) * b.applied) / maxApplied;
    root.append(svg("rect", { x: x(b.at), y: height - pad - h, width: barWidth, height: h, class: "bar" }));
  }
  if (lags.length) {
    const points = lags.map((b) => `${x(b.at) + barWidth / 2},${height - pad - ((height - 2 * pad) * b.maxLagMs) / maxLag}`);
    root.append(svg("polyline", { points: points.join(" "), class: "line" }));
  }
  const label = (text, lx, ly, anchor = "start") => {
    const node = svg("text", { x: lx, y: ly, "text-anchor": anchor, class: "axis" });
    node.textContent = text;
    return node;
  };
  root.append(label(`lag up to ${age(maxLag)}`, pad, 14), label(`${maxApplied} applied`, width - pad, 14, "end"));
  root.append(label("5 min ago", pad, height - 8), label("now", width - pad, height - 8, "end"));
  const table = el(
    "table",
    { class: "grid small" },
    el("thead", {}, el("tr", {}, ["Time", "Applied", "Duplicates", "Dead letters", "Worst lag"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, series.slice().reverse().map((b) => el("tr", {}, el("td", {}, new Date(b.at).toLocaleTimeString()), el("td", { class: "num" }, b.applied), el("td", { class: "num" }, b.duplicates), el("td", { class: "num" }, b.deadLettered), el("td", { class: "num" }, age(b.maxLagMs))))),
  );
  show(parts.chart, el("p", { class: "legend" }, el("span", { class: "key-line" }, "worst freshness lag"), " ", el("span", { class: "key-bar" }, "records applied")), root, el("details", {}, el("summary", {}, "The figures"), table));
}

function partitionTable(stats, ends) {
  const topics = new Set([...Object.keys(stats.partitions), ...Object.keys(ends || {})]);
  if (!topics.size) return show(parts.partitions, empty("No partition has been processed yet."));
  const rows = [];
  for (const topic of [...topics].sort()) {
    const processed = stats.partitions[topic] || {};
    const end = (ends || {})[topic] || {};
    const numbers = [...new Set([...Object.keys(processed), ...Object.keys(end)])].sort((a, b) => a - b);
    for (const p of numbers) {
      const done = processed[p];
      const last = end[p];
      const lag = last === undefined ? null : last - 1 - (done === undefined ? -1 : done);
      rows.push(
        el(
          "tr",
          { "data-partition": `${topic}-${p}` },
          el("th", { scope: "row" }, `${topic} / ${p}`),
          el("td", { class: "num" }, done === undefined ? "–" : done),
          el("td", { class: "num" }, last === undefined ? "–" : last),
          el("td", { class: lag > 0 ? "num low" : "num" }, lag === null ? "–" : lag),
        ),
      );
    }
  }
  show(
    parts.partitions,
    el(
      "table",
      { class: "grid", id: "partition-table" },
      el("caption", {}, "Last offset processed against Kafka's end offset (the next one to be written)"),
      el("thead", {}, el("tr", {}, ["Topic / partition", "Processed offset", "Kafka end offset", "Records behind"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows),
    ),
    ends ? null : el("p", { class: "meta" }, "Kafka's end offsets are not readable from the API: deployed, the mappings' OffsetLag metric in CloudWatch has the lag."),
  );
}

function deadLetters(stats) {
  const { reasons, recent, sink } = stats.deadLetters;
  show(
    parts.dead,
    el("p", { class: "meta" }, sink === "sqs" ? "Dead letters go to the SQS queue (the stream takes them while SQS is down)." : "Dead letters go to the Redis stream deadletter:ingest."),
    reasons.length
      ? el("table", { class: "grid", id: "reasons" }, el("caption", {}, "Reasons in the last five minutes"), el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Reason"), el("th", { scope: "col", class: "num" }, "Batches"))), el("tbody", {}, reasons.map((r) => el("tr", {}, el("td", {}, r.reason), el("td", { class: "num" }, r.count)))))
      : empty("No dead letters in the last five minutes."),
    recent.length
      ? el("table", { class: "grid small" }, el("caption", {}, "Newest in the stream"), el("thead", {}, el("tr", {}, ["When", "Record", "Reason"].map((h) => el("th", { scope: "col" }, h)))), el("tbody", {}, recent.map((d) => el("tr", {}, el("td", {}, new Date(d.at).toLocaleString()), el("td", {}, `${d.topic} / ${d.partition} @ ${d.offset}`), el("td", {}, d.reason)))))
      : null,
  );
}

function start() {
  who();
  if (!token()) return signInNeeded("This page needs a token with the admin scope.");
  new LiveView(
    async (signal) => {
      const [stats, ends] = await Promise.all([api("/admin/stats", { auth: true, signal }), kafkaEndOffsets(signal)]);
      return { stats, ends };
    },
    (view) => {
      if (view.status === "loading") return show(state, loading());
      if (view.status === "error") {
        if (view.error.status === 401) return signInNeeded("Your token has expired or is not valid here.");
        if (view.error.status === 403) return signInNeeded("Your token does not have the admin scope.");
        return show(state, problem(view.error, view.retryIn));
      }
      const { stats, ends } = view.data;
      show(state, el("p", { class: "meta", "data-state": "ready" }, `Updated ${new Date(stats.now).toLocaleTimeString()}, every ${CONFIG.pollSeconds.admin} s.`));
      tiles(stats);
      chart(stats);
      partitionTable(stats, ends);
      deadLetters(stats);
    },
    CONFIG.pollSeconds.admin,
  ).start();
}

start();
