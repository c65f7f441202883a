"use strict";
const R = JSON.parse(document.getElementById("report-data").textContent);
const PAGE_SIZE = 50;
const CODE = ["e", "s", "d", "i"];
const RTL = new Set(["ar", "fa", "ur", "he", "yi", "ps", "sd"]);  // Whisper's right-to-left languages
const state = {dataset: 0, view: "0", filter: "", sort: "wer-desc", page: 0};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "text") node.textContent = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}
const fmt = (v, d = 4) => (v === null || v === undefined) ? "—" : (typeof v === "number" ? v.toFixed(d) : String(v));
const pct = v => (v === null || v === undefined) ? "—" : (100 * v).toFixed(1) + "%";
function signed(v) { return (v === null || v === undefined) ? "—" : (v > 0 ? "+" : "") + (100 * v).toFixed(1) + " pt"; }
function table(head, rows, cls) {
  return el("table", {class: cls || null}, el("thead", {}, el("tr", {}, ...head.map(h => el("th", {text: h})))),
            el("tbody", {}, ...rows.map(r => el("tr", {}, ...r.map(c => c instanceof Node ? el("td", {}, c) :
              el("td", {class: typeof c === "number" ? "num" : null, text: typeof c === "number" ? String(c) : c}))))));
}
function uttWer(m, i) { const n = m.reference_words[i], e = m.errors[i]; return (e === null || !n) ? null : e / n; }

function summaryTable(ds, index) {
  const rows = [
    ["utterances", "utterances", 0], ["scored utterances", "scored_utterances", 0], ["WER", "wer", 4],
    ["CER", "cer", 4], ["raw WER", "raw_wer", 4], ["raw CER", "raw_cer", 4], ["substitutions", "substitutions", 0],
    ["deletions", "deletions", 0], ["insertions", "insertions", 0], ["reference words", "reference_words", 0],
    ["RTFx", "rtfx", 2], ["audio hours", "audio_hours", 4], ["decoding seconds", "wall_seconds", 1],
    ["normaliser", "normalizer"], ["language", "language"], ["task", "task"], ["decoder prompt", "decoder_prompt"],
    ["decoding", "decoding"], ["device", "device"], ["model", "model"]];
  const body = rows.map(([label, key, digits]) => el("tr", {}, el("th", {text: label}),
    ...ds.models.map((m, k) => {
      let v = m.figures[key];
      if (key === "decoding" && v) v = Object.entries(v).filter(([a, b]) => b !== null && b !== false)
                                       .map(([a, b]) => a + "=" + (typeof b === "object" ? JSON.stringify(b) : b)).join(", ");
      const num = typeof v === "number";
      return el("td", {class: num ? "num" : null, "data-metric": key, "data-model": k,
                       "data-value": num ? String(v) : null, text: num ? v.toFixed(digits) : fmt(v)});
    })));
  return el("table", {class: "summary", id: "summary-" + index, "data-dataset": ds.label},
    el("thead", {}, el("tr", {}, el("th", {text: "model"}), ...ds.models.map(m => el("th", {title: m.json_path, text: m.name})))),
    el("tbody", {}, ...body));
}

function alignment(words, hyp, chunks, lang) {
  const ref = (words || "").split(" ").filter(Boolean), h = (hyp || "").split(" ").filter(Boolean);
  // The row runs in the language's direction; each word gets its own (a hypothesis may be in another script).
  const box = el("div", {class: "align", lang: lang, dir: RTL.has(lang) ? "rtl" : "ltr"});
  for (const [code, r0, r1, h0, h1] of (chunks || [])) {
    const n = Math.max(r1 - r0, h1 - h0);
    for (let k = 0; k < n; k++) {
      const rw = r0 + k < r1 ? ref[r0 + k] : null, hw = h0 + k < h1 ? h[h0 + k] : null;
      const cls = "w " + CODE[code];
      box.append(el("span", {class: cls, title: ["", "substitution", "deletion", "insertion"][code] || null},
        el("span", {class: "r" + (rw === null ? " gap" : ""), dir: "auto", text: rw === null ? "∅" : rw}),
        el("span", {class: "h" + (hw === null ? " gap" : ""), dir: "auto", text: hw === null ? "∅" : hw})));
    }
  }
  return box;
}

function renderAnalysis(ds, root) {
  const lang = ds.language || null;
  for (const m of ds.models) {
    root.append(el("h3", {text: "Errors of " + m.name}));
    const grid = el("div", {class: "grid"});
    grid.append(el("div", {}, el("h4", {text: "Top substitutions (reference → hypothesis)"}),
      table(["reference", "hypothesis", "count"], m.substitutions.map(s => [el("span", {lang, text: s.reference}),
        el("span", {lang, text: s.hypothesis}), s.count]), "subs")));
    grid.append(el("div", {}, el("h4", {text: "Most deleted words"}),
      table(["word", "count"], m.deletions.map(s => [el("span", {lang, text: s.word}), s.count]), "dels")));
    grid.append(el("div", {}, el("h4", {text: "Most inserted words"}),
      table(["word", "count"], m.insertions.map(s => [el("span", {lang, text: s.word}), s.count]), "ins")));
    if (m.by_duration.length) grid.append(el("div", {}, el("h4", {text: "WER by clip duration"}),
      table(["duration", "utterances", "words", "WER"], m.by_duration.map(g => [g.group, g.utterances, g.reference_words, pct(g.wer)]), "by-duration")));
    if (m.by_speaker.length) grid.append(el("div", {}, el("h4", {text: "WER by speaker"}),
      table(["speaker", "utterances", "words", "WER"], m.by_speaker.map(g => [g.group, g.utterances, g.reference_words, pct(g.wer)]), "by-speaker")));
    root.append(grid);
  }
  for (const c of ds.comparisons) {
    const a = ds.models[c.before], b = ds.models[c.after];
    root.append(el("h3", {text: b.name + " against " + a.name}));
    root.append(el("p", {class: "comparison-counts"}, `On ${c.common_utterances} utterances both scored: WER ${pct(c.wer_before)} → ${pct(c.wer_after)}; `,
      el("span", {class: "better", text: `${c.better} better`}), ", ", el("span", {class: "worse", text: `${c.worse} worse`}),
      `, ${c.unchanged} unchanged (errors per utterance).`));
    if (c.difference) {
      const d = c.difference;
      root.append(el("p", {class: "comparison-interval"}, `WER difference ${signed(d.difference)}, ` +
        `${Math.round(100 * d.confidence)}% interval ${signed(d.low)} to ${signed(d.high)} ` +
        `(${d.method}: ${d.resamples.toLocaleString("en")} draws, seed ${d.seed}). ` +
        (d.low > 0 || d.high < 0 ? "0 is outside it." : "0 is inside it: these utterances cannot tell the two models apart.")));
    }
    const grid = el("div", {class: "grid"});
    const link = ch => el("button", {text: ch.id, onclick: () => showUtterance(c, ch.id)});
    grid.append(el("div", {}, el("h4", {text: "Most improved"}), table(["utterance", "errors before", "after"],
      c.most_improved.map(ch => [link(ch), ch.errors_before, ch.errors_after]), "improved")));
    grid.append(el("div", {}, el("h4", {text: "Most degraded"}), table(["utterance", "errors before", "after"],
      c.most_degraded.map(ch => [link(ch), ch.errors_before, ch.errors_after]), "degraded")));
    const diff = rows => rows.map(g => [g.group, g.utterances, pct(g.wer_before), pct(g.wer_after),
      el("span", {class: g.difference < 0 ? "better" : (g.difference > 0 ? "worse" : null), text: signed(g.difference)})]);
    if (c.by_duration.length) grid.append(el("div", {}, el("h4", {text: "WER difference by duration"}),
      table(["duration", "utterances", a.name, b.name, "difference"], diff(c.by_duration), "diff-duration")));
    if (c.by_speaker.length) grid.append(el("div", {}, el("h4", {text: "WER difference by speaker"}),
      table(["speaker", "utterances", a.name, b.name, "difference"], diff(c.by_speaker), "diff-speaker")));
    root.append(grid);
  }
}

function showUtterance(c, id) {
  state.view = c.before + ":" + c.after; state.filter = id; state.page = 0;
  document.getElementById("view-select").value = state.view;
  document.getElementById("filter").value = id;
  renderTable();
  document.getElementById("utterances").scrollIntoView();
}

function viewModels(ds) { return state.view.split(":").map(Number).map(k => ds.models[k]); }

function rowsFor(ds) {
  const models = viewModels(ds);
  const q = state.filter.trim().toLowerCase();
  let rows = [];
  for (let i = 0; i < ds.ids.length; i++) {
    if (models.every(m => m.errors[i] === null)) continue;
    if (q) {
      const texts = [ds.ids[i], ds.references[i], ds.raw_references[i]];
      for (const m of models) texts.push(m.hypotheses[i], m.raw_hypotheses[i]);
      if (!texts.some(t => t && t.toLowerCase().includes(q))) continue;
    }
    rows.push(i);
  }
  const key = i => {
    if (models.length === 2) { const a = uttWer(models[0], i), b = uttWer(models[1], i);
      return (a === null || b === null) ? null : b - a; }
    return uttWer(models[0], i);
  };
  const [field, dir] = state.sort.split("-");
  const sign = dir === "asc" ? 1 : -1;
  const value = field === "wer" ? key : (field === "duration" ? (i => ds.durations ? ds.durations[i] : null) : (i => i));
  rows.sort((x, y) => {
    const a = value(x), b = value(y);
    if (a === null && b === null) return x - y; if (a === null) return 1; if (b === null) return -1;
    return a === b ? x - y : (a < b ? -sign : sign);
  });
  return rows;
}

function renderTable() {
  const ds = R.datasets[state.dataset];
  const models = viewModels(ds);
  const rows = rowsFor(ds);
  const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);
  const shown = rows.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE);
  const lang = ds.language || null;
  const werLabel = models.length === 2 ? "ΔWER" : "WER";
  const arrow = state.sort.startsWith("wer") ? (state.sort.endsWith("desc") ? " ▼" : " ▲") : "";
  const head = el("tr", {}, el("th", {text: "utterance"}),
    el("th", {}, el("button", {id: "sort-wer", "data-sort": "wer", text: werLabel + arrow, onclick: () => {
      state.sort = state.sort === "wer-desc" ? "wer-asc" : "wer-desc"; state.page = 0; renderTable(); }})),
    el("th", {text: "reference / hypothesis, aligned word by word"}), el("th", {text: "audio"}));
  const body = el("tbody");
  for (const i of shown) {
    const cell = el("td");
    for (const m of models) {
      const ref = (m.references || ds.references)[i];
      if (models.length > 1) cell.append(el("div", {class: "model-label", text: m.name + " — WER " + pct(uttWer(m, i))}));
      cell.append(m.errors[i] === null ? el("div", {class: "note", text: "not evaluated by this model"}) :
        alignment(ref, m.hypotheses[i], m.alignments[i], lang));
    }
    const raw = el("details", {class: "raw"}, el("summary", {text: "raw text"}),
      el("div", {lang, dir: "auto", text: "REF: " + (ds.raw_references[i] || "")}),
      ...models.map(m => el("div", {lang, dir: "auto", text: (models.length > 1 ? m.name + ": " : "HYP: ") + (m.raw_hypotheses[i] || "")})));
    cell.append(raw);
    let wer;
    if (models.length === 2) { const a = uttWer(models[0], i), b = uttWer(models[1], i);
      wer = (a === null || b === null) ? null : b - a; }
    else wer = uttWer(models[0], i);
    const werText = !ds.scored[i] ? "not scored" : (models.length === 2 ? signed(wer) : pct(wer));
    const info = [el("div", {text: ds.ids[i]})];
    if (ds.durations && ds.durations[i] !== null) info.push(el("div", {class: "note", text: ds.durations[i].toFixed(1) + " s"}));
    if (ds.speakers && ds.speakers[i] !== null) info.push(el("div", {class: "note", text: "speaker " + ds.speakers[i]}));
    body.append(el("tr", {"data-id": ds.ids[i], "data-index": i},
      el("td", {class: "id"}, ...info),
      el("td", {class: "wer num" + (models.length === 2 && wer !== null ? (wer < 0 ? " better" : (wer > 0 ? " worse" : "")) : ""),
                "data-wer": wer === null ? "" : String(wer), text: werText}),
      cell,
      el("td", {}, ds.audio[i] ? el("audio", {controls: "", preload: "metadata", src: ds.audio[i]}) :
                               el("span", {class: "note", text: "—"}))));
  }
  const table = document.getElementById("utt-table");
  table.replaceChildren(el("thead", {}, head), body);
  document.getElementById("page-info").textContent =
    `${rows.length} utterance(s); page ${state.page + 1} of ${pages}`;
  document.getElementById("prev-page").disabled = state.page === 0;
  document.getElementById("next-page").disabled = state.page >= pages - 1;
}

function renderDataset() {
  const ds = R.datasets[state.dataset];
  const root = document.getElementById("dataset-view");
  root.replaceChildren();
  root.append(el("h2", {text: "Dataset " + ds.label}));
  root.append(el("p", {class: "note", id: "normaliser-note"},
    `Aligned text is normalised by the “${ds.normalizer}” normaliser (what WER was computed on); the raw text is under “raw text”.`));
  if (ds.audio_note) root.append(el("p", {class: "note warn", text: ds.audio_note}));
  renderAnalysis(ds, root);
  const views = ds.models.map((m, k) => el("option", {value: String(k), text: m.name}));
  for (const c of ds.comparisons) views.push(el("option", {value: c.before + ":" + c.after,
    text: ds.models[c.after].name + " against " + ds.models[c.before].name}));
  state.view = ds.comparisons.length ? ds.comparisons[0].before + ":" + ds.comparisons[0].after : "0";
  const viewSelect = el("select", {id: "view-select", onchange: e => { state.view = e.target.value; state.page = 0; renderTable(); }}, ...views);
  viewSelect.value = state.view;
  const sortSelect = el("select", {id: "sort-select", onchange: e => { state.sort = e.target.value; state.page = 0; renderTable(); }},
    el("option", {value: "wer-desc", text: "WER (or ΔWER), worst first"}), el("option", {value: "wer-asc", text: "WER (or ΔWER), best first"}),
    el("option", {value: "index-asc", text: "dataset order"}), el("option", {value: "duration-desc", text: "longest first"}));
  sortSelect.value = state.sort;
  const filter = el("input", {type: "search", id: "filter", placeholder: "filter: id or words in any text", value: state.filter});
  filter.addEventListener("input", e => { state.filter = e.target.value; state.page = 0; renderTable(); });
  root.append(el("h2", {id: "utterances", text: "Utterances"}),
    el("div", {class: "legend note"}, "Marks: ", el("span", {class: "w s", text: "substitution"}),
      el("span", {class: "w d", text: "deletion (∅ in hypothesis)"}), el("span", {class: "w i", text: "insertion (∅ in reference)"}),
      "top line reference, bottom line hypothesis."),
    el("div", {class: "controls"}, el("label", {}, "show ", viewSelect), el("label", {}, "sort ", sortSelect), filter,
      el("button", {id: "prev-page", text: "◀ previous", onclick: () => { state.page--; renderTable(); }}),
      el("span", {id: "page-info"}),
      el("button", {id: "next-page", text: "next ▶", onclick: () => { state.page++; renderTable(); }})),
    el("table", {id: "utt-table"}));
  renderTable();
}

function main() {
  document.getElementById("generated").textContent = "Generated " + R.generated + " from " +
    R.datasets.reduce((n, d) => n + d.models.length, 0) + " result file(s).";
  const app = document.getElementById("app");
  app.replaceChildren(el("h2", {text: "Summary"}));
  app.append(el("div", {class: "grid"}, ...R.datasets.map((ds, k) => el("div", {}, el("h3", {text: ds.label}), summaryTable(ds, k)))));
  const tabs = el("div", {class: "tabs", id: "dataset-tabs"}, "Dataset: ");
  const select = el("select", {id: "dataset-select", onchange: e => { state.dataset = Number(e.target.value);
    state.page = 0; state.filter = ""; renderDataset(); }}, ...R.datasets.map((d, k) => el("option", {value: String(k), text: d.label})));
  tabs.append(select);
  app.append(tabs, el("section", {id: "dataset-view"}));
  renderDataset();
}
main();
