// The quorrent node page: polls /api/files, draws the detail of the
// selected file (chunk map as SVG, the last minute's rate on a canvas),
// searches, downloads, shares, pauses, resumes and removes, and shows and
// sets the rate limits (empty: no limit). No external
// resources; the API token, when the daemon needs one, comes once as
// #token=... in the page's address (a fragment: never sent to a server,
// so in no request line or log) and is kept in sessionStorage.
"use strict";

(function () {
  const POLL_MS = 500;
  const HISTORY = 120; // samples of POLL_MS: one minute

  const given = location.hash.startsWith("#token=")
    ? decodeURIComponent(location.hash.slice(7))
    : new URLSearchParams(location.search).get("token");
  if (given) {
    sessionStorage.setItem("quorrent-token", given);
    history.replaceState(null, "", location.pathname);
  }
  const token = sessionStorage.getItem("quorrent-token");

  const $ = (id) => document.getElementById(id);
  // The selected file: its detail is shown; kept in the address as #file=ID.
  let selected = location.hash.startsWith("#file=") ? location.hash.slice(6) : null;
  const history_ = new Map(); // id -> [{down, up}]

  function showError(msg) {
    const e = $("error");
    if (msg) { e.textContent = msg; e.hidden = false; } else { e.hidden = true; }
  }

  async function api(method, path, body) {
    const headers = {};
    if (token) headers["Authorization"] = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    let data = null;
    try { data = await r.json(); } catch (_) { /* not JSON */ }
    if (!r.ok) {
      const msg = data && data.message ? data.message : (method + " " + path + ": " + r.status);
      throw new Error(msg);
    }
    return data;
  }

  function human(n) {
    if (n === null || n === undefined) return "";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
  }
  const rate = (r) => (r > 0 ? human(r) + "/s" : "");
  function eta(s) {
    if (s === null || s === undefined) return "";
    s = Math.round(s);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      // Styles through the CSS object model: the page's policy allows no
      // inline style attributes.
      if (k === "class") e.className = v;
      else if (k === "style") e.style.cssText = v;
      else e.setAttribute(k, v);
    }
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function button(cls, label, id, onClick) {
    const b = el("button", { class: cls, type: "button", "data-id": id }, label);
    b.addEventListener("click", (ev) => { ev.stopPropagation(); onClick(); });
    return b;
  }

  async function act(promise) {
    try { await promise; showError(null); await poll(); } catch (e) { showError(e.message); }
  }

  function renderFiles(files) {
    const body = $("files-body");
    body.replaceChildren();
    if (files.length === 0) {
      const tr = el("tr", { class: "empty" });
      tr.appendChild(el("td", { colspan: "9" }, "No files yet."));
      body.appendChild(tr);
    }
    for (const f of files) {
      const pct = Math.floor(f.progress * 100) + "%";
      const tr = el("tr", { class: "file" + (f.id === selected ? " selected" : ""), "data-id": f.id, "data-state": f.state });
      tr.appendChild(el("td", { class: "name", title: f.name }, f.name));
      tr.appendChild(el("td", { class: "size" }, human(f.size)));
      const bar = el("div", { class: "bar" });
      const fill = el("div", { class: "fill", style: "width:" + (f.progress * 100).toFixed(1) + "%" });
      bar.append(fill, el("span", { class: "progress" }, pct));
      const td = el("td");
      td.appendChild(bar);
      tr.appendChild(td);
      tr.appendChild(el("td", { class: "state" }, f.state + (f.error ? ": " + f.error.message : "")));
      tr.appendChild(el("td", { class: "down" }, rate(f.down_rate)));
      tr.appendChild(el("td", { class: "up" }, rate(f.up_rate)));
      tr.appendChild(el("td", { class: "eta" }, eta(f.eta)));
      tr.appendChild(el("td", { class: "peers" }, String(f.peers)));
      const actions = el("td", { class: "actions" });
      if (f.state === "downloading") {
        actions.appendChild(button("pause", "Pause", f.id, () => act(api("POST", "/api/files/" + f.id + "/pause"))));
      }
      if (f.state === "paused" || f.state === "failed" || f.state === "partial") {
        actions.appendChild(button("resume", "Resume", f.id, () => act(api("POST", "/api/files/" + f.id + "/resume"))));
      }
      actions.appendChild(button("remove", "Remove", f.id, () => {
        if (confirm("Stop sharing " + f.name + "? Its data stays on disk.")) act(api("DELETE", "/api/files/" + f.id));
      }));
      tr.appendChild(actions);
      tr.addEventListener("click", () => {
        selected = f.id;
        history.replaceState(null, "", "#file=" + f.id);
        pollDetail();
      });
      body.appendChild(tr);

      const h = history_.get(f.id) || [];
      h.push({ down: f.down_rate, up: f.up_rate });
      while (h.length > HISTORY) h.shift();
      history_.set(f.id, h);
    }
  }

  function drawChunkMap(cm) {
    const svg = $("chunk-map");
    const ns = "http://www.w3.org/2000/svg";
    svg.replaceChildren();
    const n = cm.cells || 0;
    svg.setAttribute("data-cells", String(n));
    if (n === 0) return;
    const w = 512 / n;
    for (let i = 0; i < n; i++) {
      const d = cm.map.charCodeAt(i) - 48; // 0..9
      if (d <= 0) continue;
      const r = document.createElementNS(ns, "rect");
      r.setAttribute("x", (i * w).toFixed(2));
      r.setAttribute("y", "0");
      r.setAttribute("width", (w + 0.2).toFixed(2));
      r.setAttribute("height", "24");
      r.setAttribute("fill", d === 9 ? "#2f6fde" : "#8fb0ec");
      svg.appendChild(r);
    }
  }

  function drawPlot(id) {
    const c = $("rate-plot");
    const w = (c.width = c.clientWidth || 600);
    const h = (c.height = 120);
    const g = c.getContext("2d");
    g.clearRect(0, 0, w, h);
    const samples = history_.get(id) || [];
    const max = Math.max(1, ...samples.map((s) => Math.max(s.down, s.up)));
    $("rate-max").textContent = "max " + rate(max);
    for (const [key, color] of [["down", "#2f6fde"], ["up", "#d9822b"]]) {
      g.beginPath();
      g.strokeStyle = color;
      g.lineWidth = 2;
      samples.forEach((s, i) => {
        const x = (w * (i + HISTORY - samples.length)) / (HISTORY - 1);
        const y = h - 4 - ((h - 8) * s[key]) / max;
        if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
      });
      g.stroke();
    }
  }

  async function pollDetail() {
    if (!selected) return;
    try {
      const f = await api("GET", "/api/files/" + selected);
      $("detail").hidden = false;
      $("detail-name").textContent = f.name;
      $("detail-id").textContent = f.id + " · " + human(f.size) + " · " + f.have + "/" + f.chunks + " chunks";
      drawChunkMap(f.chunk_map || { cells: 0, map: "" });
      drawPlot(f.id);
      const body = $("peers-body");
      body.replaceChildren();
      for (const p of (Array.isArray(f.peers) ? f.peers : [])) {
        const tr = el("tr", { class: "peer", "data-peer": p.peer_id });
        tr.appendChild(el("td", { title: p.peer_id }, p.peer_id.slice(0, 16)));
        tr.appendChild(el("td", {}, p.addr || ""));
        tr.appendChild(el("td", {}, rate(p.down_rate)));
        tr.appendChild(el("td", {}, human(p.bytes)));
        tr.appendChild(el("td", {}, (p.partial ? "partial" : "complete") + (p.connected ? "" : ", gone")));
        body.appendChild(tr);
      }
    } catch (e) {
      closeDetail();
    }
  }

  function closeDetail() {
    selected = null;
    $("detail").hidden = true;
    history.replaceState(null, "", location.pathname);
  }

  async function poll() {
    try {
      renderFiles(await api("GET", "/api/files"));
      await pollDetail();
    } catch (e) {
      showError(e.message);
    }
  }

  async function status() {
    try {
      const s = await fetch("/status").then((r) => r.json());
      $("node-status").textContent = (s.user || "not logged in") + " · peer " + s.peer_id.slice(0, 16) + " · v" + s.version;
    } catch (_) {
      $("node-status").textContent = "daemon unreachable";
    }
  }

  $("search-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const q = $("search-input").value.trim();
    if (!q) return;
    try {
      const hits = await api("GET", "/api/search?q=" + encodeURIComponent(q));
      showError(null);
      const body = $("search-body");
      body.replaceChildren();
      for (const h of hits) {
        const tr = el("tr", { class: "hit", "data-id": h.file_id });
        tr.appendChild(el("td", { class: "name", title: h.file_id }, h.name));
        tr.appendChild(el("td", {}, human(h.size)));
        tr.appendChild(el("td", {}, h.owners + (h.partial_owners ? " + " + h.partial_owners + " partial" : "")));
        const td = el("td");
        td.appendChild(button("download", "Download", h.file_id, () =>
          act(api("POST", "/api/downloads", { id: h.file_id, name: h.name }))));
        tr.appendChild(td);
        body.appendChild(tr);
      }
      $("search-results").hidden = hits.length === 0;
      $("search-empty").hidden = hits.length !== 0;
    } catch (e) {
      showError(e.message);
    }
  });

  $("share-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const path = $("share-path").value.trim();
    if (!path) return;
    $("share-result").textContent = "hashing…";
    try {
      const f = await api("POST", "/api/shares", { path });
      $("share-result").textContent = "shared " + f.name + " (" + f.id + ")";
      showError(null);
      await poll();
    } catch (e) {
      $("share-result").textContent = "";
      showError(e.message);
    }
  });

  // Rate limits: MB/s in the form, bytes per second in the API.
  const mb = (r) => (r === null || r === undefined ? "" : String(r / 1e6));
  function showLimits(l) {
    $("limit-up").value = mb(l.max_upload_rate);
    $("limit-down").value = mb(l.max_download_rate);
    const say = (r) => (r ? mb(r) + " MB/s" : "no limit");
    $("limits-now").textContent = "upload: " + say(l.max_upload_rate) + " · download: " + say(l.max_download_rate);
  }
  async function loadLimits() {
    try { showLimits(await api("GET", "/api/limits")); } catch (e) { showError(e.message); }
  }
  $("limits-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const field = (id) => {
      // A number input reads "" for what is not a number: refused, not "no limit".
      if ($(id).validity.badInput) throw new Error(id + ": not a number of MB/s");
      const t = $(id).value.trim();
      return t === "" ? null : Math.round(Number(t) * 1e6);
    };
    try {
      showLimits(await api("PUT", "/api/limits", { max_upload_rate: field("limit-up"), max_download_rate: field("limit-down") }));
      showError(null);
    } catch (e) {
      showError(e.message);
    }
  });

  $("detail-close").addEventListener("click", closeDetail);

  // One poll after another (never two at once), paused while the page is
  // hidden.
  async function loop() {
    if (!document.hidden) await poll();
    setTimeout(loop, POLL_MS);
  }
  document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(); });
  status();
  loadLimits();
  loop();
})();
