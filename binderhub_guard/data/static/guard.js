// The guard page: polls /hub/api/guard and draws it. Every value from the report is put in
// the DOM with textContent or setAttribute, never parsed as HTML: user and server names are data.
(function () {
  "use strict";

  const root = document.getElementById("guard");
  const apiUrl = root.dataset.apiUrl;
  const refreshMs = Number(root.dataset.refreshSeconds) * 1000;
  const canAdmin = root.dataset.canAdmin === "true";
  const xsrf = (window.jhdata && window.jhdata.xsrf_token) || "";
  const MAX_POINTS = 360;
  const SVG = "http://www.w3.org/2000/svg";

  const points = [];
  let previous = null;
  let timer = null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      node.setAttribute(name, value);
    }
    return node;
  }

  // Long tables show their first rows and a button for the rest, which stays pressed.
  const ROWS_SHOWN = 10;
  const expanded = new Set();

  function fill(tbody, rows, emptyText, columns) {
    const table = tbody.parentElement.id;
    tbody.replaceChildren();
    if (!rows.length) {
      tbody.append(el("tr", {}, el("td", { colspan: columns, class: "text-body-secondary" }, emptyText)));
      return;
    }
    if (expanded.has(table) || rows.length <= ROWS_SHOWN + 2) {
      tbody.append(...rows);
      return;
    }
    const more = el("button", { type: "button", class: "btn btn-link btn-sm p-0 align-baseline" }, `show all ${rows.length}`);
    more.addEventListener("click", () => {
      expanded.add(table);
      tbody.replaceChildren(...rows);
    });
    const note = el("td", { colspan: columns, class: "text-body-secondary" }, `${rows.length - ROWS_SHOWN} more, `, more);
    tbody.append(...rows.slice(0, ROWS_SHOWN), el("tr", {}, note));
  }

  // site-packages paths are long and say little: show the package path, keep the full one
  function site(path) {
    const short = path.replace(/^.*\/site-packages\//, "");
    return el("td", { class: "guard-label", title: path }, short);
  }

  function mib(bytes) {
    return bytes / (1024 * 1024);
  }

  function formatBytes(bytes) {
    const abs = Math.abs(bytes);
    if (abs >= 1024 * 1024) return (bytes / (1024 * 1024)).toFixed(1) + " MiB";
    if (abs >= 1024) return (bytes / 1024).toFixed(1) + " KiB";
    return bytes + " B";
  }

  function formatAge(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 120) return seconds + " s";
    if (seconds < 7200) return Math.round(seconds / 60) + " min";
    return (seconds / 3600).toFixed(1) + " h";
  }

  function clock(epochSeconds) {
    return new Date(epochSeconds * 1000).toLocaleTimeString();
  }

  function formatNumber(value) {
    if (Number.isInteger(value)) return String(value);
    return Math.abs(value) >= 100 ? value.toFixed(0) : value.toPrecision(3);
  }

  function formatEvidence(key, value) {
    const one = (v) => (typeof v === "number" && /bytes/.test(key) ? formatBytes(v) : String(v));
    if (Array.isArray(value)) return value.map(one).join(" → ");
    if (value && typeof value === "object") {
      return Object.entries(value).map(([k, v]) => k + " " + one(v)).join(", ");
    }
    return one(value);
  }

  function sum(values) {
    return values.reduce((a, b) => a + b, 0);
  }

  // -- data ---------------------------------------------------------------------------------

  function record(report) {
    const ledger = report.ledger || {};
    const stops = report.stop_guard || {};
    const point = {
      time: report.time,
      rss: mib(report.process.rss_bytes),
      tasks: report.process.asyncio_tasks,
      tracked: ledger.available ? sum(Object.values(ledger.counts.live)) : null,
      orphans: ledger.available ? ledger.counts.orphans_live : null,
      passed: null,
      throttled: null,
    };
    if (stops.available && previous && previous.stop_guard.available) {
      const seconds = report.time - previous.time;
      const now = stops.totals;
      const before = previous.stop_guard.totals;
      const heldBack = (t) => (t.throttle || 0) + (t["dry-run"] || 0);
      if (seconds > 0) {
        point.passed = (now.pass - before.pass) / seconds;
        point.throttled = (heldBack(now) - heldBack(before)) / seconds;
      }
    }
    points.push(point);
    if (points.length > MAX_POINTS) points.shift();
    previous = report;
  }

  // -- charts -------------------------------------------------------------------------------

  const W = 400;
  const H = 150;
  const PAD = { left: 44, right: 6, top: 8, bottom: 20 };

  function niceMax(value) {
    if (value <= 0) return 1;
    const magnitude = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (step * magnitude >= value) return step * magnitude;
    }
    return 10 * magnitude;
  }

  function drawChart(id, series) {
    const figure = document.getElementById(id);
    const shown = series.filter((s) => points.some((p) => p[s.key] !== null));
    const chart = svg("svg", {
      viewBox: `0 0 ${W} ${H}`,
      role: "img",
      class: "guard-chart-svg",
    });
    const values = shown.flatMap((s) => points.map((p) => p[s.key]).filter((v) => v !== null));
    const top = niceMax(Math.max(0, ...values) * 1.05);
    const t0 = points.length ? points[0].time : 0;
    const t1 = points.length ? points[points.length - 1].time : 1;
    const x = (t) => PAD.left + ((t - t0) / Math.max(t1 - t0, 1e-9)) * (W - PAD.left - PAD.right);
    const y = (v) => H - PAD.bottom - (v / top) * (H - PAD.top - PAD.bottom);

    for (const fraction of [0, 0.5, 1]) {
      const v = top * fraction;
      chart.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), class: "guard-grid" }));
      const label = svg("text", { x: PAD.left - 4, y: y(v) + 4, class: "guard-axis", "text-anchor": "end" });
      label.textContent = formatNumber(v);
      chart.append(label);
    }
    if (points.length) {
      for (const [t, anchor] of [[t0, "start"], [t1, "end"]]) {
        const label = svg("text", { x: x(t), y: H - 4, class: "guard-axis", "text-anchor": anchor });
        label.textContent = clock(t);
        chart.append(label);
      }
    }
    const legend = el("div", { class: "guard-legend" });
    for (const s of shown) {
      const drawn = points.filter((p) => p[s.key] !== null);
      const line = svg("polyline", {
        class: `guard-line ${s.css}`,
        points: drawn.map((p) => `${x(p.time).toFixed(1)},${y(p[s.key]).toFixed(1)}`).join(" "),
        "data-series": s.key,
        "data-values": drawn.map((p) => p[s.key]).join(" "),
      });
      chart.append(line);
      const last = drawn[drawn.length - 1];
      chart.append(svg("circle", { cx: x(last.time), cy: y(last[s.key]), r: 2.5, class: `guard-dot ${s.css}` }));
      legend.append(
        el("span", { class: "guard-key" },
          el("span", { class: `guard-swatch ${s.css}` }),
          `${s.label} ${formatNumber(last[s.key])}`)
      );
    }
    const title = svg("title");
    title.textContent = figure.querySelector("figcaption").textContent;
    chart.prepend(title);
    for (const old of figure.querySelectorAll("svg, .guard-legend, .guard-note")) old.remove();
    figure.append(chart, legend);
    if (!shown.length) {
      figure.append(el("div", { class: "guard-note text-body-secondary small" }, series.note || "no data yet"));
    }
  }

  function drawCharts(report) {
    drawChart("chart-rss", [{ key: "rss", label: "RSS", css: "guard-s1" }]);
    drawChart("chart-tasks", [{ key: "tasks", label: "tasks", css: "guard-s2" }]);
    const resources = [
      { key: "tracked", label: "tracked", css: "guard-s1" },
      { key: "orphans", label: "orphaned", css: "guard-s4" },
    ];
    resources.note = report.ledger.available ? null : report.ledger.reason;
    drawChart("chart-resources", resources);
    const dryRun = report.stop_guard.available && report.stop_guard.dry_run;
    const stops = [
      { key: "passed", label: "passed", css: "guard-s3" },
      { key: "throttled", label: dryRun ? "would throttle (dry run)" : "throttled", css: "guard-s4" },
    ];
    stops.note = report.stop_guard.available ? "two refreshes needed for a rate" : report.stop_guard.reason;
    drawChart("chart-stops", stops);
  }

  // -- sections -----------------------------------------------------------------------------

  function drawStats(report) {
    const p = report.process;
    const stats = [
      ["RSS", formatBytes(p.rss_bytes)],
      ["tasks", p.asyncio_tasks],
      ["threads", p.threads],
      ["open files", p.open_fds === null ? "?" : p.open_fds],
      ["running servers", p.active_servers],
      ["users", p.total_users],
      ["spawns", p.spawns_total],
      ["uptime", formatAge(p.uptime_seconds)],
    ];
    document.getElementById("guard-stats").replaceChildren(
      ...stats.map(([name, value]) =>
        el("span", { class: "guard-stat" }, el("span", { class: "guard-stat-value" }, value), " ", name)
      )
    );
  }

  const SIGNAL_TEXT = {
    orphans_live: "Resources left behind by ended spawns are still live.",
    orphans_found: "Spawns left resources behind recently (released since).",
    count_rising: "A watched object count keeps rising while active servers do not.",
    rss_per_spawn: "Resident memory grows with every spawn.",
    watches_exceed_reflectors: "More open watches than reflectors, sample after sample.",
    relist_storm: "A reflector relists faster than the guard's damping rate.",
  };

  function drawSignals(report) {
    const list = document.getElementById("guard-signals");
    const signals = report.leak_signals || [];
    if (!signals.length) {
      list.replaceChildren(el("li", { class: "text-body-secondary", "data-signal": "" }, "None active."));
      return;
    }
    list.replaceChildren(
      ...signals.map((signal) => {
        const critical = signal.severity === "critical";
        const evidence = el("dl", { class: "guard-evidence mb-0" });
        for (const [key, value] of Object.entries(signal.evidence || {})) {
          evidence.append(el("dt", {}, key), el("dd", {}, formatEvidence(key, value)));
        }
        return el(
          "li",
          {
            class: `guard-signal alert ${critical ? "alert-danger" : "alert-warning"} py-2 mb-2`,
            "data-signal": signal.name,
          },
          el("span", { class: `badge ${critical ? "text-bg-danger" : "text-bg-warning"} me-2` }, signal.severity),
          el("strong", {}, signal.name),
          " ",
          SIGNAL_TEXT[signal.name] || "",
          evidence
        );
      })
    );
  }

  function liveKinds(live) {
    return Object.entries(live || {})
      .filter(([, n]) => n > 0)
      .map(([kind, n]) => `${kind} ${n}`)
      .join(", ");
  }

  function origin(lines) {
    if (!lines || !lines.length) return "";
    return el("details", {}, el("summary", {}, lines[0]), el("pre", { class: "mb-0" }, lines.join("\n")));
  }

  function drawLedger(report) {
    const ledger = report.ledger;
    const spawns = document.querySelector("#guard-spawns tbody");
    const orphans = document.querySelector("#guard-orphans tbody");
    const shared = document.querySelector("#guard-shared tbody");
    const summary = document.getElementById("guard-ledger-summary");
    if (!ledger.available) {
      summary.textContent = "Unavailable: " + ledger.reason;
      for (const body of [spawns, orphans, shared]) body.replaceChildren();
      return;
    }
    const c = ledger.counts;
    summary.textContent =
      `${c.spawns_active} active and ${c.spawns_ended} ended spawns; orphans found ${c.orphans_found},` +
      ` released ${c.orphans_released}, live ${c.orphans_live}` +
      (ledger.release_orphans ? "" : " (release_orphans is off)") +
      (ledger.enabled ? "" : " — recording is off");
    const orphanedSpawns = new Set(ledger.orphans.filter((o) => o.live).map((o) => o.spawn_id));
    fill(
      spawns,
      ledger.spawns.map((s) => {
        const orphaned = orphanedSpawns.has(s.spawn_id);
        return el(
          "tr",
          { class: orphaned ? "table-danger guard-orphaned" : "", "data-spawn-id": s.spawn_id },
          el("td", {}, s.user),
          el("td", {}, s.server),
          el("td", {}, s.spawn_id),
          el("td", {}, s.state),
          el("td", {}, formatAge(report.time - s.started)),
          el("td", {}, liveKinds(s.live)),
          el("td", {}, s.ended ? `${formatAge(report.time - s.ended)} ago, ${s.end_reason || ""}` : "")
        );
      }),
      "No spawns recorded yet.",
      7
    );
    fill(
      orphans,
      ledger.orphans
        .slice()
        .sort((a, b) => b.live - a.live || b.found - a.found)
        .map((o) =>
          el(
            "tr",
            { class: o.live ? "table-danger guard-orphaned" : "" },
            el("td", {}, o.kind),
            el("td", { class: "guard-label" }, o.label),
            el("td", {}, o.user),
            el("td", {}, o.server),
            el("td", {}, o.spawn_id),
            el("td", {}, formatAge(report.time - o.found) + " ago"),
            el("td", {}, o.live ? "live" : o.released ? "released" : "ended"),
            el("td", { class: "guard-origin" }, origin(o.origin))
          )
        ),
      "No orphans.",
      8
    );
    fill(
      shared,
      ledger.shared.map((r) =>
        el(
          "tr",
          { class: r.failed ? "table-warning" : "" },
          el("td", { class: "guard-label" }, r.label),
          el("td", {}, r.live ? "yes" : "no"),
          el("td", {}, r.holders),
          el("td", {}, r.failed ? "gave up: cache frozen" : "ok")
        )
      ),
      "None.",
      4
    );
  }

  function drawStops(report) {
    const guard = report.stop_guard;
    const summary = document.getElementById("guard-stops-summary");
    const callers = document.querySelector("#guard-callers tbody");
    if (!guard.available) {
      summary.textContent = "Unavailable: " + guard.reason;
      callers.replaceChildren();
      return;
    }
    const t = guard.totals;
    summary.textContent =
      `${guard.enabled ? (guard.dry_run ? "Dry run" : "On") : "Off"}: ` +
      `${t.pass} passed, ${t.throttle} throttled, ${t["dry-run"]} would have been (dry run);` +
      ` remembering ${guard.tracked_keys} stops and ${guard.tracked_buckets} callers` +
      ` in ${Math.round(guard.memory_bytes / 1024)} of ${Math.round(guard.max_memory / 1024)} KiB`;
    const heldBack = guard.top_callers.filter((c) => (c.requests.throttle || 0) + (c.requests["dry-run"] || 0) > 0);
    fill(
      callers,
      heldBack.map((c) =>
        el(
          "tr",
          {},
          el("td", {}, c.caller),
          el("td", {}, c.requests.throttle || 0),
          el("td", {}, c.requests["dry-run"] || 0),
          el("td", {}, c.requests.pass || 0)
        )
      ),
      "No caller throttled.",
      4
    );
  }

  function drawTracemalloc(report) {
    const tm = report.tracemalloc;
    const status = document.getElementById("guard-tracemalloc-status");
    status.textContent = tm.enabled
      ? `On, ${tm.frames} frames, ${formatBytes(tm.traced_bytes)} traced; baseline ${clock(tm.baseline_time)}`
      : "Off" + (canAdmin ? "" : " (switching it needs the custom:guard:admin scope)");
    const button = document.getElementById("guard-tracemalloc-switch");
    if (button) {
      button.textContent = tm.enabled ? "Switch tracemalloc off" : "Switch tracemalloc on";
      button.dataset.enable = tm.enabled ? "false" : "true";
      button.disabled = false;
    }
    fill(
      document.querySelector("#guard-allocations tbody"),
      tm.top_growth.map((a) =>
        el(
          "tr",
          {},
          site(a.site),
          el("td", {}, formatBytes(a.size_growth_bytes)),
          el("td", {}, formatBytes(a.size_bytes)),
          el("td", {}, a.count_growth)
        )
      ),
      tm.enabled ? "No growth since the baseline." : "Tracing is off.",
      4
    );
  }

  // -- refresh ------------------------------------------------------------------------------

  function setStatus(text, failed) {
    const status = document.getElementById("guard-status");
    status.textContent = text;
    status.classList.toggle("text-danger", Boolean(failed));
  }

  async function call(method, url, body) {
    const reply = await fetch(url, {
      method,
      credentials: "same-origin",
      headers: { "X-XSRFToken": xsrf, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!reply.ok) {
      let message = reply.statusText;
      try {
        message = (await reply.json()).message || message;
      } catch (e) {
        // not JSON: keep the status text
      }
      throw new Error(`${reply.status} ${message}`);
    }
    return reply.json();
  }

  function render(report) {
    drawStats(report);
    drawSignals(report);
    drawCharts(report);
    drawLedger(report);
    drawStops(report);
    drawTracemalloc(report);
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const report = await call("GET", apiUrl);
      record(report);
      render(report);
      root.dataset.refreshes = Number(root.dataset.refreshes) + 1;
      root.dataset.reportTime = report.time;
      setStatus(`Updated ${clock(report.time)}, every ${refreshMs / 1000} s; hub samples every ${report.sampler.interval_seconds} s`);
    } catch (error) {
      setStatus(`Could not load the report (${error.message}); retrying every ${refreshMs / 1000} s`, true);
    }
    if (!document.hidden) timer = setTimeout(refresh, refreshMs);
  }

  const button = document.getElementById("guard-tracemalloc-switch");
  if (button) {
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await call("POST", apiUrl + "/tracemalloc", { enabled: button.dataset.enable === "true" });
      } catch (error) {
        setStatus(`Could not switch tracemalloc (${error.message})`, true);
      }
      refresh();
    });
  }

  // A hidden tab costs the hub nothing; coming back refreshes at once.
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) clearTimeout(timer);
    else refresh();
  });

  refresh();
})();
