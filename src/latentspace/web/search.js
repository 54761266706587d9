// The collection search page (GET /): plain JavaScript, no build step, nothing fetched from
// elsewhere. It calls the server's /v1/collections routes; every text that comes from a
// collection (captions, paths) is set as textContent, never parsed as HTML.
"use strict";

(function () {
  const { api, relative, errorText, storeKey, keyWanted, queueThumbnail, clearThumbnails, baseName } =
    window.latentspace;  // api.js
  const PAGE = 20;          // results per page: "Load more" asks for PAGE more
  const K_MAX = 500;        // the server's upper bound for k
  const THUMB_SIZE = 256;   // thumbnail edge in px (the server caches each size it made)

  const $ = (id) => document.getElementById(id);
  const ui = {
    form: $("search-form"), text: $("q"), file: $("image-file"), min: $("min-score"), rel: $("min-relevance"),
    addPlus: $("add-plus"), addMinus: $("add-minus"), terms: $("terms"), chip: $("chip-template"),
    collectionField: $("collection-field"), collection: $("collection"), collectionName: $("collection-name"),
    summary: $("summary"), message: $("message"), results: $("results"), more: $("load-more"),
    drop: $("drop-overlay"), forgetKey: $("forget-key"), card: $("card-template"), duplicates: $("duplicates-link"),
  };

  const state = {
    collections: [],    // GET /v1/collections
    collection: null,   // the chosen collection's name
    terms: [],          // the query: {kind: "text" | "like" | "image", value | file, sign: 1 | -1, label}
    min: null,          // min_score, or null for none
    rel: null,          // min_relevance, or null for the server's default
    k: PAGE,
    shown: new Set(),   // ids on the page
  };
  let generation = 0;   // bumped by each search: answers to older ones are dropped

  ui.forgetKey.addEventListener("click", () => {
    storeKey("");
    clearResults();
    setMessage("The API key is forgotten; the next request asks for one.", "info");
  });

  // -- messages ---------------------------------------------------------------------------------
  function setMessage(text, kind) {
    ui.message.textContent = text;
    ui.message.dataset.kind = kind;
    ui.message.setAttribute("role", kind === "error" ? "alert" : "status");
  }

  function setBusy(busy) {
    ui.results.setAttribute("aria-busy", busy ? "true" : "false");
    document.body.classList.toggle("busy", busy);
    ui.more.disabled = busy;
  }

  // -- collections ------------------------------------------------------------------------------
  async function loadCollections() {
    const body = await api(relative("/v1/collections"));
    state.collections = body.data || [];
    ui.collection.replaceChildren();
    for (const c of state.collections) {
      const option = document.createElement("option");
      option.value = c.name;
      option.textContent = c.name + (c.status === "ready" ? " · " + c.items + " items"
                                                          : " (" + c.status.split(":")[0] + ")");
      option.title = c.status;
      ui.collection.append(option);
    }
    ui.collectionField.hidden = state.collections.length < 2;
    ui.collectionName.hidden = state.collections.length !== 1;
    if (state.collections.length === 1) {
      const c = state.collections[0];
      ui.collectionName.textContent = c.name + " · " + c.items + " items";
      ui.collectionName.title = c.status === "ready" ? "space " + c.space : c.status;
    }
  }

  function chooseCollection(name) {
    const names = state.collections.map((c) => c.name);
    const ready = state.collections.filter((c) => c.status === "ready").map((c) => c.name);
    state.collection = names.includes(name) ? name : (ready[0] || names[0] || null);
    if (state.collection) ui.collection.value = state.collection;
    ui.duplicates.href = "duplicates" + (state.collection ? "?" + new URLSearchParams({ c: state.collection }) : "");
  }

  // -- the query's terms -------------------------------------------------------------------------
  // A query is a list of terms, each added (sign 1: results move toward it) or subtracted (-1:
  // away); the server sums their unit vectors with these weights. At most one is an image (the
  // image search takes one upload); a query of one added term is sent as the plain text or like
  // search, as before terms existed.
  const textTerm = (value, sign = 1) => ({ kind: "text", value, sign });
  const likeTerm = (value, label = null, sign = 1) => ({ kind: "like", value, label, sign });
  const imageTerm = (file) => ({ kind: "image", file, sign: 1 });

  function termLabel(term) {
    if (term.kind === "text") return "“" + term.value + "”";
    if (term.kind === "like") return "like " + (term.label || "item " + term.value);
    return "image " + (term.file.name || "pasted");
  }

  function renderTerms() {
    ui.terms.replaceChildren();
    state.terms.forEach((term, index) => {
      const chip = ui.chip.content.firstElementChild.cloneNode(true);
      const label = termLabel(term);
      const minus = term.sign < 0;
      chip.dataset.kind = term.kind;
      chip.dataset.sign = String(term.sign);
      chip.querySelector(".chip-label").textContent = label;
      chip.querySelector(".chip-label").title = label;
      const sign = chip.querySelector(".chip-sign");
      sign.textContent = minus ? "−" : "+";
      sign.setAttribute("aria-pressed", String(minus));
      sign.setAttribute("aria-label", (minus ? "Subtracted; add " : "Added; subtract ") + label);
      sign.title = minus ? "Subtracted: results move away from it. Click to add it instead."
                         : "Added: results move toward it. Click to subtract it instead.";
      sign.addEventListener("click", () => {
        term.sign = -term.sign;
        search();
      });
      const remove = chip.querySelector(".chip-remove");
      remove.setAttribute("aria-label", "Remove " + label);
      remove.title = "Remove from the query";
      remove.addEventListener("click", () => removeTerm(index));
      ui.terms.append(chip);
    });
    ui.terms.hidden = state.terms.length === 0;
  }

  function removeTerm(index) {
    state.terms.splice(index, 1);
    if (state.terms.length) {
      search();
      return;
    }
    clearResults();
    renderTerms();
    writeUrl(true);
    setMessage("Type a query and press Enter, or drop, paste or upload an image.", "info");
  }

  // The box's text added (sign 1) or subtracted (-1); a text already in the query takes the sign.
  function addText(sign) {
    const text = ui.text.value.trim();
    if (!text) {
      ui.text.focus();
      return;
    }
    readMins();
    ui.text.value = "";
    const same = state.terms.find((term) => term.kind === "text" && term.value === text);
    if (same) same.sign = sign;
    newSearch(same ? state.terms : [...state.terms, textTerm(text, sign)]);
  }

  // -- the URL: ?c=COLLECTION, q=TEXT / not=TEXT / like=ID / unlike=ID (each repeatable), min=SCORE,
  // rel=RELEVANCE --
  const URL_KEYS = { text: ["q", "not"], like: ["like", "unlike"] };  // [added, subtracted]

  function writeUrl(push) {
    const params = new URLSearchParams();
    if (state.collection) params.set("c", state.collection);
    for (const term of state.terms) {  // an image cannot be put in a link
      if (URL_KEYS[term.kind]) params.append(URL_KEYS[term.kind][term.sign < 0 ? 1 : 0], term.value);
    }
    if (state.min !== null) params.set("min", String(state.min));
    if (state.rel !== null) params.set("rel", String(state.rel));
    const search = params.toString() ? "?" + params.toString() : "";
    if (search === location.search) return;
    history[push ? "pushState" : "replaceState"](null, "", location.pathname + search);
  }

  function readUrl() {
    const params = new URLSearchParams(location.search);
    chooseCollection(params.get("c"));
    const min = parseMin(params.get("min") || "");
    state.min = min;
    ui.min.value = min === null ? "" : String(min);
    const rel = parseRelevance(params.get("rel") || "");
    state.rel = rel;
    ui.rel.value = rel === null ? "" : String(rel);
    const terms = [];
    for (const [key, value] of params) {
      if (!value) continue;
      if (key === "q" || key === "not") terms.push(textTerm(value, key === "q" ? 1 : -1));
      else if (key === "like" || key === "unlike") terms.push(likeTerm(value, null, key === "like" ? 1 : -1));
    }
    state.terms = terms;
    const single = terms.length === 1 && terms[0].kind === "text" && terms[0].sign > 0;
    ui.text.value = single ? terms[0].value : "";
    renderTerms();
  }

  function parseMin(value) {
    if (String(value).trim() === "") return null;
    const n = Number(value);
    if (!Number.isFinite(n)) return null;
    return Math.max(-1, Math.min(1, n));
  }

  function parseRelevance(value) {
    if (String(value).trim() === "") return null;
    const n = Number(value);
    if (!Number.isFinite(n)) return null;
    return Math.max(0, Math.min(1, n));
  }

  function readMins() {
    state.min = parseMin(ui.min.value);
    state.rel = parseRelevance(ui.rel.value);
  }

  // -- searching --------------------------------------------------------------------------------
  function clearResults() {
    generation++;
    clearThumbnails();
    state.shown = new Set();
    ui.results.replaceChildren();
    ui.more.hidden = true;
    ui.summary.textContent = "";
  }

  function describeQuery() {
    const terms = state.terms;
    if (!terms.length) return "";
    if (terms.length === 1 && terms[0].sign > 0) {
      const only = terms[0];
      if (only.kind === "text") return "Results for “" + only.value + "”";
      if (only.kind === "like") return "More like " + (only.label || "item " + only.value);
      return "Results for the image " + (only.file.name || "you gave") + " (image searches are not kept in the link)";
    }
    const parts = terms.map((term, i) => (term.sign < 0 ? "− " : i ? "+ " : "") + termLabel(term));
    const image = terms.some((term) => term.kind === "image");
    return "Results for " + parts.join(" ") + (image ? " (the image is not kept in the link)" : "");
  }

  async function search({ push = true, append = false } = {}) {
    if (!state.terms.length) return;
    if (!append) keyWanted();  // the user asked again: a refused key may be asked for again
    if (!(await ensureCollections())) return;
    if (!state.collection) return;
    if (!append) {
      clearResults();
      renderTerms();
      state.k = PAGE;
      writeUrl(push);
    }
    const mine = ++generation;
    const terms = state.terms;
    ui.summary.textContent = describeQuery();
    // Asked first, beside the search: once results arrive, their thumbnails take the browser's few
    // connections to the server, and a label asked after them could wait behind every one.
    if (terms.some((term) => term.kind === "like" && !term.label)) labelLikeTerms(terms, mine);
    setMessage(append ? "Loading more…" : "Searching…", "loading");
    setBusy(true);
    const base = relative("/v1/collections/" + encodeURIComponent(state.collection) + "/search");
    try {
      let body;
      const image = terms.find((term) => term.kind === "image");
      const others = terms.filter((term) => term.kind !== "image");
      const wire = (term) => (term.kind === "text" ? { text: term.value, weight: term.sign }
                                                   : { like: term.value, weight: term.sign });
      if (image) {
        const form = new FormData();
        form.append("image", image.file, image.file.name || "pasted-image");
        form.append("k", String(state.k));
        if (state.min !== null) form.append("min_score", String(state.min));
        if (state.rel !== null) form.append("min_relevance", String(state.rel));
        if (image.sign < 0) form.append("image_weight", "-1");
        if (others.length) form.append("terms", JSON.stringify(others.map(wire)));
        body = await api(base + "/image", { method: "POST", form });
      } else {
        const only = terms.length === 1 && terms[0].sign > 0 ? terms[0] : null;
        const json = !only ? { terms: terms.map(wire) } : only.kind === "text" ? { text: only.value }
                                                                                : { like: only.value };
        json.k = state.k;
        if (state.min !== null) json.min_score = state.min;
        if (state.rel !== null) json.min_relevance = state.rel;
        body = await api(base, { method: "POST", json });
      }
      if (mine !== generation) return;
      // matches 0: nothing reaches the relevance bar; the results are the nearest items anyway,
      // shown faded (a server without relevance sends no matches: every result is a match)
      const nothing = body.matches === 0 && body.results.length > 0;
      const fresh = body.results.filter((r) => !state.shown.has(r.id));
      for (const r of fresh) state.shown.add(r.id);
      ui.results.append(...fresh.map(card));
      const exhausted = nothing || body.results.length < state.k || state.k >= K_MAX;
      ui.more.hidden = exhausted || state.shown.size === 0;
      if (nothing) {
        const bar = typeof body.min_relevance === "number" ? " (" + body.min_relevance + ")" : "";
        setMessage("Nothing here looks like that: no result reaches the minimum relevance" + bar +
                   ". The nearest items are shown faded; lower the minimum relevance to see them as results.",
                   "nothing");
      } else if (state.shown.size === 0) {
        setMessage("No results" + (state.min !== null ? " scoring at least " + state.min : "") +
                   ". Try other words, another image or a lower minimum score.", "empty");
      } else {
        const n = state.shown.size;
        setMessage(n + (n === 1 ? " result" : " results") + (exhausted ? "" : " so far"), "done");
      }
    } catch (error) {
      if (mine !== generation) return;
      setMessage(errorText(error), "error");
    } finally {
      if (mine === generation) setBusy(false);
    }
  }

  // A shared link names items by id; say which items they are once their metadata arrives.
  async function labelLikeTerms(terms, mine) {
    for (const term of terms) {
      if (term.kind !== "like" || term.label) continue;
      try {
        const item = await api(relative("/v1/collections/" + encodeURIComponent(state.collection) + "/items/" +
                                        encodeURIComponent(term.value)));
        term.label = itemName(item);
      } catch (e) { continue; /* the id alone is shown */ }
      // The label is kept on the term even if another search started meanwhile (scrolling for more
      // results does): a later search sees it labelled and will not ask again, so show it now.
      if (mine !== generation && !state.terms.includes(term)) return;
      ui.summary.textContent = describeQuery();
      renderTerms();
    }
  }

  function newSearch(terms) {
    state.terms = terms;
    search();
  }

  function itemName(item) {
    const where = item.path || item.url || item.id;
    return baseName(where);
  }

  function safeLink(url) {
    try {
      const u = new URL(url);
      return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
    } catch (e) { return null; }
  }

  // -- one result -------------------------------------------------------------------------------
  function card(result) {
    const li = ui.card.content.firstElementChild.cloneNode(true);
    const where = result.path || result.url || "";
    const name = where ? baseName(where) : result.id;
    li.dataset.id = result.id;
    const img = li.querySelector("img");
    img.alt = result.caption || where || "item " + result.id;
    li.querySelector(".score").textContent = result.score.toFixed(3);
    if (typeof result.relevance === "number") {
      li.querySelector(".relevance").textContent = result.relevance.toFixed(2);
    }
    if (result.match === false) {
      li.classList.add("below");
      li.title = "below the minimum relevance: shown because nothing reached it";
    }
    const caption = li.querySelector(".caption");
    if (result.caption) caption.textContent = result.caption; else caption.remove();
    const path = li.querySelector(".path");
    const link = result.url ? safeLink(result.url) : null;
    if (link) {
      const a = document.createElement("a");
      a.href = link;
      a.rel = "noopener noreferrer";
      a.target = "_blank";
      a.textContent = name;
      path.append(a);
    } else {
      path.textContent = name;
    }
    path.title = where;
    const like = li.querySelector(".like");
    like.setAttribute("aria-label", "More like " + (result.caption || name));
    like.addEventListener("click", () => {
      ui.text.value = "";
      newSearch([likeTerm(result.id, name)]);
      window.scrollTo({ top: 0, behavior: "smooth" });
    });
    queueThumbnail(result.thumbnail, img, THUMB_SIZE);
    return li;
  }

  // -- image queries: upload, drop, paste -------------------------------------------------------
  function firstImage(files) {
    const list = Array.from(files || []);
    return list.find((f) => f.type.startsWith("image/")) || list.find((f) => !f.type) || null;
  }

  function searchImage(file) {
    if (!file) {
      setMessage("That is not an image file: use a JPEG, PNG, WebP, GIF or BMP.", "error");
      return;
    }
    newSearch([imageTerm(file)]);
  }

  ui.file.addEventListener("change", () => {
    const file = ui.file.files[0];
    ui.file.value = "";  // choosing the same file again searches again
    if (file) searchImage(file);
  });

  const hasFiles = (event) => event.dataTransfer && Array.from(event.dataTransfer.types).includes("Files");
  let dragDepth = 0;
  document.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dragDepth++;
    ui.drop.hidden = false;
  });
  document.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) ui.drop.hidden = true;
  });
  document.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dragDepth = 0;
    ui.drop.hidden = true;
    searchImage(firstImage(event.dataTransfer.files));
  });
  document.addEventListener("paste", (event) => {
    const file = firstImage(event.clipboardData && event.clipboardData.files);
    if (!file) return;  // text pastes go where they were going
    event.preventDefault();
    searchImage(file);
  });

  // -- the controls -----------------------------------------------------------------------------
  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.text.value.trim();
    readMins();
    if (text) {
      newSearch([textTerm(text)]);  // Enter starts a new query; + Add and − Exclude extend this one
    } else if (state.terms.length) {
      search();
    } else {
      ui.text.focus();
    }
  });
  ui.addPlus.addEventListener("click", () => addText(1));
  ui.addMinus.addEventListener("click", () => addText(-1));

  ui.min.addEventListener("change", () => {
    const min = parseMin(ui.min.value);
    if (ui.min.value.trim() !== "" && min === null) return;
    if (min === state.min) return;
    state.min = min;
    if (state.terms.length) search(); else writeUrl(false);
  });

  ui.rel.addEventListener("change", () => {
    const rel = parseRelevance(ui.rel.value);
    if (ui.rel.value.trim() !== "" && rel === null) return;
    if (rel === state.rel) return;
    state.rel = rel;
    if (state.terms.length) search(); else writeUrl(false);
  });

  ui.collection.addEventListener("change", () => {
    chooseCollection(ui.collection.value);
    const kept = state.terms.filter((term) => term.kind !== "like");  // item ids belong to one collection
    const dropped = kept.length < state.terms.length;
    state.terms = kept;
    if (kept.length) {
      search();
    } else if (dropped) {
      clearResults();
      renderTerms();
      writeUrl(true);
      setMessage("Collection " + state.collection + ": type a query or give an image.", "info");
    } else {
      writeUrl(false);
    }
  });

  ui.more.addEventListener("click", () => {
    state.k = Math.min(K_MAX, state.k + PAGE);
    search({ append: true });
  });

  window.addEventListener("popstate", () => {
    readUrl();
    if (state.terms.length) search({ push: false }); else clearResults();
  });

  // -- start ------------------------------------------------------------------------------------
  // The collections, listed once (again after a failure, e.g. a key dialog that was cancelled).
  let collectionsLoaded = false;
  async function ensureCollections() {
    if (collectionsLoaded) return state.collections.length > 0;
    setMessage("Loading collections…", "loading");
    try {
      await loadCollections();
    } catch (error) {
      setMessage(errorText(error), "error");
      return false;
    }
    collectionsLoaded = true;
    chooseCollection(state.collection || new URLSearchParams(location.search).get("c"));
    if (!state.collections.length) {
      setMessage("This server has no collections: start it with --collection NAME=DIR.", "empty");
      return false;
    }
    return true;
  }

  async function start() {
    const params = new URLSearchParams(location.search);
    const text = params.get("q");
    if (text) ui.text.value = text;  // there to retry with, should listing the collections fail
    ui.min.value = params.get("min") || "";  // and the bars with it
    ui.rel.value = params.get("rel") || "";
    if (!(await ensureCollections())) return;
    readUrl();
    writeUrl(false);
    if (state.terms.length) {
      search({ push: false });
    } else {
      setMessage("Type a query and press Enter, or drop, paste or upload an image.", "info");
      ui.text.focus();
    }
  }

  start();
})();
