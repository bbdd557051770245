// The cluster dashboard: long-polls /status?after=VERSION (the proxy
// answers as soon as its view changes, or after a second) and redraws.
// Every value goes into the page as text, never as HTML.
"use strict";
(function () {
  const $ = (s) => document.querySelector(s);
  const svgNS = "http://www.w3.org/2000/svg";
  let version = 0;

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function num(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"); }
  function ago(ms, now) {
    if (!ms) return "never";
    const s = Math.max(0, (now - ms) / 1000);
    return s < 1 ? "now" : s < 60 ? s.toFixed(0) + " s ago" : (s / 60).toFixed(0) + " min ago";
  }
  function clock(ms) { return new Date(ms).toLocaleTimeString("en-GB"); }

  function renderLeader(st) {
    const b = $("#leader");
    b.dataset.leader = st.leader == null ? "" : String(st.leader);
    b.dataset.term = String(st.term);
    b.textContent = st.leader == null ? "no leader" : "leader: tracker " + st.leader + " · term " + st.term;
    b.className = "badge" + (st.leader == null ? " none" : "");
  }

  function renderMembers(st) {
    const body = $("#members tbody");
    body.replaceChildren();
    // Lag as the leader sees it (entries its log is ahead of what each
    // member has matched): one report, one moment.
    const lagOf = new Map();
    for (const m of st.members) {
      if (m.up && m.report && m.report.role === "leader") {
        lagOf.set(m.id, 0);
        for (const f of m.report.followers) lagOf.set(f.id, f.lag);
      }
    }
    for (const m of st.members) {
      const r = m.report;
      const role = m.up && r ? r.role : "down";
      const tr = el("tr", null, "member");
      tr.dataset.id = String(m.id);
      tr.dataset.role = role;
      tr.dataset.up = String(m.up);
      tr.append(el("td", m.id), el("td", m.addr), el("td", m.up ? "up" : "down", m.up ? "up" : "down"));
      tr.append(el("td", role, "role-" + role));
      tr.append(el("td", r && m.up ? r.term : "–", "num"));
      tr.append(el("td", r && m.up ? num(r.commit_index) : "–", "num"));
      tr.append(el("td", r && m.up ? num(r.applied_index) : "–", "num"));
      tr.append(el("td", m.up && lagOf.has(m.id) ? num(lagOf.get(m.id)) : "–", "num"));
      tr.append(el("td", ago(m.seen_ms, st.now_ms)));
      if (m.error && !m.up) tr.title = m.error;
      body.append(tr);
    }
  }

  function renderTimeline(st) {
    const ol = $("#timeline");
    ol.replaceChildren();
    const items = st.timeline.slice().reverse();
    for (const c of items) {
      const li = el("li", clock(c.at_ms) + " — tracker " + c.leader + " leads (term " + c.term + ")");
      li.dataset.leader = String(c.leader);
      ol.append(li);
    }
    if (!items.length) ol.append(el("li", "none seen yet", "muted"));
  }

  function figures(dl, pairs) {
    dl.replaceChildren();
    for (const [k, v] of pairs) dl.append(el("dt", k), el("dd", v));
  }

  function renderFigures(st) {
    const lead = st.members.find((m) => m.up && m.report && m.report.role === "leader");
    const c = lead ? lead.report.registry : null;
    figures($("#registry"), c ? [
      ["users", num(c.users)], ["files", num(c.files)], ["owners", num(c.owners)],
      ["peers", num(c.peers)], ["live peers", num(c.live_peers)], ["sessions", num(c.sessions)],
    ] : [["", "no leader answering"]]);
    const p = st.proxy.counters;
    $("#proxy-name").textContent = "(" + st.proxy.name + ")";
    figures($("#proxy"), [
      ["requests", num(p.forwarded)], ["retries", num(p.retries)], ["leader changes", num(p.leader_changes)],
      ["unavailable", num(p.unavailable)], ["connections", num(p.connections)], ["pending", num(p.pending)],
    ]);
  }

  // The seconds since the first one with traffic (at least the last
  // minute, at most five), missing ones as zero.
  function seconds(st) {
    const byT = new Map(st.proxy.series.map((s) => [s.t, s]));
    const end = Math.floor(st.now_ms / 1000);
    const first = st.proxy.series.length ? st.proxy.series[0].t : end;
    const span = Math.min(300, Math.max(60, end - first + 1));
    const out = [];
    for (let t = end - span + 1; t <= end; t++) out.push(byT.get(t) || { t, writes: 0, write_us_sum: 0, write_us_max: 0 });
    return out;
  }

  function path(values, max, w, h) {
    const n = values.length;
    return values.map((v, i) => (i ? "L" : "M") + (i * w / (n - 1)).toFixed(1) + "," + (h - (v / max) * (h - 4)).toFixed(1)).join("");
  }

  function chart(svg, series, maxLabel) {
    const w = 600, h = 160;
    svg.replaceChildren();
    const max = Math.max(1, ...series.flatMap((s) => s.values));
    for (const f of [0.25, 0.5, 0.75]) {
      const line = document.createElementNS(svgNS, "line");
      line.setAttribute("class", "grid-line");
      line.setAttribute("x1", "0"); line.setAttribute("x2", String(w));
      line.setAttribute("y1", String(h * f)); line.setAttribute("y2", String(h * f));
      svg.append(line);
    }
    for (const s of series) {
      const p = document.createElementNS(svgNS, "path");
      let d = path(s.values, max, w, h);
      if (s.cls === "area") d += "L" + w + "," + h + "L0," + h + "Z";
      p.setAttribute("d", d);
      p.setAttribute("class", s.cls);
      svg.append(p);
    }
    const t = document.createElementNS(svgNS, "text");
    t.setAttribute("x", "4"); t.setAttribute("y", "12");
    t.textContent = maxLabel(max);
    svg.append(t);
  }

  function renderCharts(st) {
    const secs = seconds(st);
    // The current second is still filling: plot up to the one before.
    const done = secs.slice(0, -1);
    const rates = done.map((s) => s.writes);
    chart($("#rate-chart"), [{ values: rates, cls: "area" }], (m) => "max " + num(m) + "/s");
    const last = done[done.length - 1];
    $("#rate-now").textContent = num(last ? last.writes : 0);
    $("#rate-peak").textContent = num(Math.max(0, ...rates));
    const mean = done.map((s) => (s.writes ? s.write_us_sum / s.writes / 1000 : 0));
    const max = done.map((s) => s.write_us_max / 1000);
    chart($("#latency-chart"), [{ values: max, cls: "max" }, { values: mean, cls: "mean" }], (m) => "max " + m.toFixed(1) + " ms");
    $("#latency-now").textContent = last && last.writes ? (last.write_us_sum / last.writes / 1000).toFixed(2) + " ms" : "–";
  }

  function render(st) {
    renderLeader(st);
    renderMembers(st);
    renderTimeline(st);
    renderFigures(st);
    renderCharts(st);
    document.body.dataset.version = String(st.version);
  }

  async function loop() {
    for (;;) {
      try {
        const r = await fetch("/status?after=" + version, { cache: "no-store" });
        if (!r.ok) throw new Error("HTTP " + r.status);
        const st = await r.json();
        version = st.version;
        render(st);
        $("#conn").textContent = "live · updated " + clock(st.now_ms);
        $("#conn").className = "muted";
      } catch (e) {
        $("#conn").textContent = "proxy unreachable (" + e.message + "), retrying…";
        $("#conn").className = "down";
        version = 0;
        await new Promise((ok) => setTimeout(ok, 1000));
      }
    }
  }
  loop();
})();
