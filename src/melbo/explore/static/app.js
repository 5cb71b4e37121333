// melbo explore: the page. Plain JS, no dependencies, nothing loaded from elsewhere.
// Model text (completions, signatures) and the user's labels are untrusted: they are only
// ever written with textContent (through el() below), never parsed as HTML.
"use strict";

(function () {
  // The printed URL carries the token once; the server answered with a cookie, so drop it
  // from the address bar (and from history and screenshots).
  const here = new URL(window.location.href);
  if (here.searchParams.has("token")) {
    here.searchParams.delete("token");
    window.history.replaceState(null, "", here.pathname + here.search + here.hash);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
      else if (k === "dataset") Object.assign(node.dataset, v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }
  const $ = (id) => document.getElementById(id);
  const fmt = (x) => (x === null || x === undefined ? "–" : typeof x === "number" ? (Number.isInteger(x) ? String(x) : x.toPrecision(3)) : String(x));

  async function api(path, body) {
    const opts = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
    const r = await fetch(path, opts);
    const data = await r.json().catch(() => ({ error: "HTTP " + r.status }));
    if (!r.ok) throw new Error(data.error || "HTTP " + r.status);
    return data;
  }

  let RUN = null;

  async function pollStatus() {
    try {
      const s = await api("/api/status");
      const run = s.running ? `generating feature ${fmt(s.running.feature)} at ${fmt(s.running.scale)}×R` : "idle";
      $("status").textContent = `worker: ${run} · ${s.queued} queued · ${s.cached} completions cached`;
    } catch (e) { $("status").textContent = "server unreachable"; }
  }

  // ------------------------------------------------------------------ feature list

  function listView(main) {
    const cols = [{ key: "index", title: "#", kind: "number", help: "feature index" },
                  { key: "label", title: "label", kind: "text", help: "your label" },
                  ...RUN.columns];
    const state = { rows: [], sort: RUN.columns.some((c) => c.key === "behaviour") ? "behaviour" : "alpha2", desc: true,
                    filter: "", labelled: false, hits: null };
    const info = el("span", { id: "search-info" });
    const exportInfo = el("span", { id: "export-info" });
    const controls = el("div", { class: "controls" },
      el("input", { id: "filter", type: "search", placeholder: "filter: index, label, signature", on: { input: (e) => { state.filter = e.target.value.toLowerCase(); render(); } } }),
      el("label", {}, el("input", { id: "labelled", type: "checkbox", on: { change: (e) => { state.labelled = e.target.checked; render(); } } }), " labelled only"),
      el("form", { id: "search-form", on: { submit: (e) => { e.preventDefault(); search(); } } },
        el("input", { id: "search", type: "search", placeholder: "search completions seen so far" }),
        el("button", { type: "submit" }, "search"),
        el("button", { type: "button", id: "search-clear", on: { click: () => { state.hits = null; $("search").value = ""; info.textContent = ""; render(); } } }, "clear")),
      info,
      el("button", { id: "export", type: "button", on: { click: exportSelected } }, "export selected"),
      exportInfo);
    const thead = el("tr", {}, el("th", {}, ""), ...cols.map((c) => el("th", { "data-key": c.key, title: c.help, class: "sortable", on: { click: () => { if (state.sort === c.key) state.desc = !state.desc; else { state.sort = c.key; state.desc = c.kind !== "text"; } render(); } } }, c.title)));
    const tbody = el("tbody");
    main.replaceChildren(
      el("p", { class: "note" }, `${RUN.n_features} ${RUN.method} features, layers ${RUN.source_layer} → ${RUN.target_layer}, R = ${fmt(RUN.R)}. Click a column to sort; click a feature to steer with it.`),
      controls, el("table", { id: "features" }, el("thead", {}, thead), tbody));

    function visible() {
      let rows = state.rows.filter((r) => {
        if (state.labelled && !r.label) return false;
        if (state.hits && !state.hits.has(r.index)) return false;
        if (!state.filter) return true;
        return String(r.index) === state.filter || (r.label || "").toLowerCase().includes(state.filter) || (r.signature || "").toLowerCase().includes(state.filter);
      });
      const k = state.sort, sgn = state.desc ? -1 : 1;
      rows = rows.slice().sort((a, b) => {
        const x = a[k], y = b[k];
        const nx = x === null || x === undefined || x === "", ny = y === null || y === undefined || y === "";
        if (nx || ny) return nx && ny ? a.index - b.index : nx ? 1 : -1; // missing values last
        if (x < y) return -sgn; if (x > y) return sgn; return a.index - b.index;
      });
      return rows;
    }
    function render() {
      for (const th of thead.querySelectorAll("th[data-key]")) th.dataset.sorted = th.dataset.key === state.sort ? (state.desc ? "desc" : "asc") : "";
      tbody.replaceChildren(...visible().map((r) => el("tr", { dataset: { index: r.index } },
        el("td", {}, el("input", { type: "checkbox", class: "pick", "aria-label": `select feature ${r.index}`, value: r.index })),
        ...cols.map((c) => c.key === "index" ? el("td", { class: "num" }, el("a", { href: `/feature/${r.index}` }, String(r.index)))
          : el("td", { class: c.kind === "text" ? "text" : "num", "data-key": c.key }, fmt(r[c.key]))))));
    }
    async function search() {
      const q = $("search").value.trim();
      if (!q) return;
      try {
        const res = await api("/api/search?q=" + encodeURIComponent(q));
        state.hits = new Set(res.hits.map((h) => h.feature));
        info.textContent = `${res.hits.length} feature(s) said it`;
      } catch (e) { info.textContent = e.message; }
      render();
    }
    async function exportSelected() {
      const picks = [...tbody.querySelectorAll("input.pick:checked")].map((x) => Number(x.value));
      if (!picks.length) { exportInfo.textContent = "select features first"; return; }
      try {
        const res = await api("/api/export", { features: picks });
        exportInfo.textContent = `${res.n} feature(s) exported to ${res.path}`;
      } catch (e) { exportInfo.textContent = e.message; }
    }
    api("/api/features").then((d) => { state.rows = d.rows; render(); document.body.dataset.ready = "list"; });
  }

  // ------------------------------------------------------------------ feature page

  function featureView(main, k) {
    const params = new URLSearchParams(window.location.search);
    const row0 = {};
    const panes = [{ feature: k, es: null }];
    const compare = params.get("compare");
    if (compare !== null && compare !== "" && Number(compare) !== k) panes.push({ feature: Number(compare), es: null });
    // disabled until the stored notes arrive, so nothing typed before then is overwritten by them
    const label = el("input", { id: "label", type: "text", maxlength: 200, placeholder: "label", disabled: true });
    const note = el("textarea", { id: "note", rows: 3, placeholder: "notes", disabled: true });
    const saveBtn = el("button", { id: "save-notes", type: "button", disabled: true, on: { click: saveNotes } }, "save");
    const saved = el("span", { id: "notes-saved" });
    const scale = el("input", { id: "scale", type: "range", min: -4, max: 4, step: 0.25, value: params.get("scale") || 1 });
    const scaleOut = el("output", { id: "scale-value" });
    const ablV = el("input", { id: "ablate-v", type: "checkbox" });
    const ablU = el("input", { id: "ablate-u", type: "checkbox", disabled: !RUN.has_targets });
    const maxTok = el("input", { id: "max-tokens", type: "number", min: 1, max: 256, value: RUN.max_new_tokens });
    const cmp = el("input", { id: "compare", type: "number", min: 0, max: RUN.n_features - 1, placeholder: "feature #", value: panes[1] ? panes[1].feature : "" });
    const typed = el("textarea", { id: "prompt", rows: 2, placeholder: "a prompt of your own (optional)" });
    const progress = el("progress", { id: "progress", max: 1, value: 0 });
    const msg = el("span", { id: "gen-status" });
    const table = el("table", { id: "completions" });
    const plot = svg("svg", { id: "curve", viewBox: "0 0 420 220", width: 420, height: 220, role: "img" });

    main.replaceChildren(
      el("h1", {}, el("a", { href: "/" }, "features"), " / feature ", String(k), panes[1] ? ` vs ${panes[1].feature}` : ""),
      el("section", { class: "notes" }, label, note, saveBtn, saved),
      el("section", { class: "controls" },
        el("label", {}, "scale ", scale, " ", scaleOut),
        el("label", {}, ablV, " ablate v"), el("label", { title: RUN.has_targets ? "" : "these features have no output directions" }, ablU, " ablate u"),
        el("label", {}, "tokens ", maxTok),
        el("label", {}, "compare with ", cmp, " ", el("button", { type: "button", id: "compare-go", on: { click: goCompare } }, "compare")),
        el("div", { class: "typed" }, typed),
        el("button", { id: "run", type: "button", on: { click: runAll } }, "generate"),
        el("button", { id: "sweep", type: "button", on: { click: sweep } }, "sweep scales"),
        progress, msg),
      table,
      el("section", { class: "plot" }, el("h2", {}, "behaviour score against scale"), plot,
        el("p", { class: "note" }, "Score: consistency of the phrase the steered completions share across the held-out prompts (0–1). Filled: measured here; hollow: melbo discover.")));

    function showScale() { scaleOut.textContent = `${Number(scale.value)} × R`; }
    showScale();
    scale.addEventListener("input", showScale);
    scale.addEventListener("change", () => runAll());
    ablV.addEventListener("change", () => runAll());
    ablU.addEventListener("change", () => runAll());

    function goCompare() {
      const q = new URLSearchParams({ scale: scale.value });
      if (cmp.value !== "") q.set("compare", cmp.value);
      window.location.assign(`/feature/${k}?${q}`);
    }
    async function saveNotes() {
      try {
        const r = await api(`/api/notes/${k}`, { label: label.value, note: note.value });
        label.value = r.label; saved.textContent = "saved";
      } catch (e) { saved.textContent = e.message; }
    }
    function prompts() { return typed.value.trim() ? [...RUN.prompts, typed.value] : [...RUN.prompts]; }
    function buildTable() {
      const head = el("tr", {}, el("th", {}, "prompt"), el("th", {}, "unsteered"), ...panes.map((p) => el("th", {}, `feature ${p.feature}`)));
      const body = el("tbody", {}, ...prompts().map((p, i) => el("tr", {},
        el("td", { class: "prompt" }, p), el("td", { class: "completion", id: `u-${i}` }),
        ...panes.map((_, j) => el("td", { class: "completion", id: `s-${j}-${i}` })))));
      table.replaceChildren(el("thead", {}, head), body);
    }
    function query(pane, opts) {
      const q = new URLSearchParams({ feature: pane.feature, scale: opts.scale, ablate_v: ablV.checked ? 1 : 0, ablate_u: ablU.checked ? 1 : 0, max_new_tokens: maxTok.value, heldout: 1 });
      if (opts.typed && typed.value.trim()) q.set("prompt", typed.value);
      return "/api/generate?" + q;
    }
    // One request as a stream of events; resolves on "done", rejects on "error".
    function stream(url, onEvent) {
      return new Promise((resolve, reject) => {
        const es = new EventSource(url);
        es.onmessage = (m) => {
          const ev = JSON.parse(m.data);
          onEvent(ev, es);
          if (ev.type === "done") { es.close(); resolve(ev); }
          if (ev.type === "error") { es.close(); reject(new Error(ev.message)); }
        };
        es.onerror = () => { es.close(); reject(new Error("the stream was interrupted or refused (a busy server answers 429): try again")); };
        onEvent({ type: "open" }, es);
      });
    }
    let generation = 0;
    async function runAll() {
      const gen = ++generation;
      for (const p of panes) if (p.es) p.es.close();
      buildTable();
      document.body.dataset.state = "running";
      progress.value = 0;
      msg.textContent = "queued";
      const s = Number(scale.value), plain = s === 0 && !ablV.checked && !ablU.checked;
      const t0 = performance.now();
      try {
        await Promise.all(panes.map((pane, j) => stream(query(pane, { scale: s, typed: true }), (ev, es) => {
          if (ev.type === "open") { pane.es = es; return; }
          if (gen !== generation) return;
          if (ev.type === "queued") msg.textContent = ev.ahead ? `queued (${ev.ahead} ahead)` : "starting";
          if (ev.type === "start") msg.textContent = "generating…";
          if (ev.type === "text") {
            const cell = ev.side === "unsteered" ? $(`u-${ev.prompt}`) : $(`s-${j}-${ev.prompt}`);
            if (cell) { cell.textContent = ev.text; cell.classList.toggle("final", !!ev.final); }
            if (plain && ev.side === "unsteered") { const c = $(`s-${j}-${ev.prompt}`); if (c) c.textContent = ev.text; }
            if (ev.progress !== undefined) progress.value = ev.progress;
          }
          if (ev.type === "done") {
            ev.steered.forEach((t, i) => { const c = $(`s-${j}-${i}`); if (c) { c.textContent = t; c.classList.add("final"); } });
            ev.unsteered.forEach((t, i) => { const c = $(`u-${i}`); if (c) { c.textContent = t; c.classList.add("final"); } });
          }
        })));
        if (gen === generation) {
          progress.value = 1;
          msg.textContent = `done in ${((performance.now() - t0) / 1000).toFixed(1)} s`;
          document.body.dataset.state = "done";
          drawCurve();
        }
      } catch (e) {
        if (gen === generation) { msg.textContent = e.message; document.body.dataset.state = "error"; }
      }
    }
    async function sweep() {
      const scales = [-3, -2, -1, 1, 2, 3];
      document.body.dataset.state = "sweeping";
      for (const [i, s] of scales.entries()) {
        msg.textContent = `sweep: ${s} × R (${i + 1}/${scales.length})`;
        for (const pane of panes) {
          try { await stream(query(pane, { scale: s, typed: false }), () => {}); } catch (e) { msg.textContent = e.message; return; }
        }
        await drawCurve();
      }
      msg.textContent = "sweep done";
      document.body.dataset.state = "done";
    }
    async function drawCurve() {
      const colors = ["#1f5fbf", "#c0392b"];
      const series = [];
      for (const [j, pane] of panes.entries()) {
        const q = new URLSearchParams({ max_new_tokens: maxTok.value, ablate_v: ablV.checked ? 1 : 0, ablate_u: ablU.checked ? 1 : 0 });
        try {
          const c = await api(`/api/curve/${pane.feature}?${q}`);
          series.push({ pts: c.session, color: colors[j], filled: true, name: `feature ${pane.feature}` });
          if (c.discover.length) series.push({ pts: c.discover, color: colors[j], filled: false, name: `feature ${pane.feature} (discover)` });
        } catch (e) { /* nothing measured yet */ }
      }
      const all = series.flatMap((s) => s.pts);
      const xmin = Math.min(-4, ...all.map((p) => p.scale)), xmax = Math.max(4, ...all.map((p) => p.scale));
      const ymax = Math.max(1, ...all.map((p) => p.score));
      const X = (x) => 40 + (x - xmin) / (xmax - xmin) * 360, Y = (y) => 190 - y / ymax * 170;
      const kids = [svg("line", { x1: 40, y1: 190, x2: 400, y2: 190, stroke: "#888" }), svg("line", { x1: X(0), y1: 20, x2: X(0), y2: 190, stroke: "#ccc" }),
        svg("text", { x: 400, y: 210, "text-anchor": "end", class: "axis" }, "scale (× R)"), svg("text", { x: 36, y: 24, "text-anchor": "end", class: "axis" }, fmt(ymax)),
        svg("text", { x: 36, y: 194, "text-anchor": "end", class: "axis" }, "0")];
      for (let x = Math.ceil(xmin); x <= xmax; x++) kids.push(svg("text", { x: X(x), y: 204, "text-anchor": "middle", class: "axis" }, x));
      for (const [i, s] of series.entries()) {
        if (s.pts.length > 1) kids.push(svg("polyline", { points: s.pts.map((p) => `${X(p.scale)},${Y(p.score)}`).join(" "), fill: "none", stroke: s.color, "stroke-dasharray": s.filled ? "" : "4 3" }));
        for (const p of s.pts) {
          const dot = svg("circle", { cx: X(p.scale), cy: Y(p.score), r: 4, fill: s.filled ? s.color : "white", stroke: s.color, class: "point" });
          dot.append(svg("title", {}, `${s.name}: ${fmt(p.score)} at ${p.scale} × R${p.signature ? " — " + p.signature : ""}`));
          kids.push(dot);
        }
        kids.push(svg("text", { x: 48, y: 36 + 14 * i, fill: s.color, class: "legend" }, (s.filled ? "● " : "○ ") + s.name));
      }
      plot.replaceChildren(...kids);
    }
    api("/api/features").then((d) => {
      Object.assign(row0, d.rows[k] || {});
      label.value = row0.label || ""; note.value = row0.note || "";
      label.disabled = note.disabled = saveBtn.disabled = false;
      if (params.get("scale") === null && typeof row0.best_scale === "number") { scale.value = row0.best_scale; showScale(); }
      document.body.dataset.ready = "feature";
      runAll();
    });
  }

  // ------------------------------------------------------------------ start

  async function start() {
    const main = $("main");
    try { RUN = await api("/api/run"); } catch (e) { main.replaceChildren(el("p", { class: "error" }, e.message)); return; }
    const base = (p) => String(p).replace(/[\\/]+$/, "").split(/[\\/]/).pop();
    $("run-info").textContent = `${base(RUN.directory)} · ${base(RUN.model)} · prompts: ${RUN.prompt_source}`;
    $("run-info").title = `${RUN.directory}\n${RUN.model}`;
    pollStatus();
    setInterval(pollStatus, 2000);
    const m = window.location.pathname.match(/^\/feature\/(\d+)$/);
    if (m && Number(m[1]) < RUN.n_features) featureView(main, Number(m[1]));
    else if (m) main.replaceChildren(el("p", { class: "error" }, `no feature ${m[1]}: this run has ${RUN.n_features}`));
    else listView(main);
  }
  start();
})();
