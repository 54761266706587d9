// The duplicates page (GET /duplicates): a collection's duplicate groups from
// GET /v1/collections/NAME/duplicates, level by level, each member a thumbnail with a link to
// search like it. Texts from the collection (paths) are set as textContent, never parsed as HTML.
"use strict";

(function () {
  const { api, relative, errorText, storeKey, keyWanted, queueThumbnail, clearThumbnails, baseName } =
    window.latentspace;
  const THUMB_SIZE = 160;
  const LEVEL_NAMES = { exact: "Exact copies", near: "Near copies", similar: "Similar items" };

  const $ = (id) => document.getElementById(id);
  const ui = {
    form: $("dup-form"), collectionField: $("collection-field"), collection: $("collection"),
    collectionName: $("collection-name"), level: $("level"), nearPixels: $("near-pixels"), similar: $("similar"),
    summary: $("summary"), message: $("message"), groups: $("groups"), forgetKey: $("forget-key"),
    group: $("group-template"), member: $("member-template"),
  };
  let collections = [];
  let generation = 0;  // bumped by each request: answers to older ones are dropped

  function setMessage(text, kind) {
    ui.message.textContent = text;
    ui.message.dataset.kind = kind;
    ui.message.setAttribute("role", kind === "error" ? "alert" : "status");
  }

  function clear() {
    clearThumbnails();
    ui.groups.replaceChildren();
    ui.summary.textContent = "";
  }

  // A threshold field: empty means the server's default; out of range is clamped like the search page's.
  function number(input, low, high) {
    const text = input.value.trim();
    if (text === "") return null;
    const n = Number(text);
    return Number.isFinite(n) ? Math.max(low, Math.min(high, n)) : null;
  }

  async function loadCollections() {
    const body = await api(relative("/v1/collections"));
    collections = body.data || [];
    ui.collection.replaceChildren();
    for (const c of collections) {
      const option = document.createElement("option");
      option.value = c.name;
      option.textContent = c.name + (c.status === "ready" ? " · " + c.items + " items" : " (" + c.status + ")");
      ui.collection.append(option);
    }
    ui.collectionField.hidden = collections.length < 2;
    ui.collectionName.hidden = collections.length !== 1;
    if (collections.length === 1) ui.collectionName.textContent = collections[0].name + " · " + collections[0].items + " items";
    const wanted = new URLSearchParams(location.search).get("c");
    const ready = collections.filter((c) => c.status === "ready").map((c) => c.name);
    const chosen = collections.some((c) => c.name === wanted) ? wanted : (ready[0] || (collections[0] || {}).name);
    if (chosen) ui.collection.value = chosen;
  }

  function member(collection, m) {
    const li = ui.member.content.firstElementChild.cloneNode(true);
    const where = m.path || m.url || (m.shard ? m.shard + " · " + m.key : "") || m.id;
    li.dataset.id = m.id;
    const img = li.querySelector("img");
    img.alt = where;
    const path = li.querySelector(".path");
    path.textContent = baseName(where);
    path.title = where;
    const like = li.querySelector(".search-like");
    like.href = "./?" + new URLSearchParams({ c: collection, like: m.id }).toString();
    queueThumbnail(m.thumbnail, img, THUMB_SIZE);
    return li;
  }

  function render(body, level) {
    const groups = body.groups.filter((g) => level === "all" || g.level === level);
    const counts = ["exact", "near", "similar"]
      .map((l) => (body.counts[l] ? body.counts[l].groups + " " + l : null)).filter(Boolean).join(", ");
    ui.summary.textContent = body.collection + ": " + body.items + " items; groups: " + (counts || "none");
    for (const g of groups) {
      const section = ui.group.content.firstElementChild.cloneNode(true);
      section.dataset.level = g.level;
      section.querySelector(".level").textContent = LEVEL_NAMES[g.level] || g.level;
      section.querySelector(".group-size").textContent = "· " + g.size + " items";
      const list = section.querySelector(".group-members");
      for (const m of g.members) list.append(member(body.collection, m));
      ui.groups.append(section);
    }
    const note = body.unverified ? " " + body.unverified + " candidate pairs could not be read again (kept at most similar)." : "";
    if (groups.length) setMessage(groups.length + " groups shown." + note, "info");
    else setMessage("No " + (level === "all" ? "" : level + " ") + "duplicates in this collection at these settings." + note, "empty");
  }

  async function find() {
    const mine = ++generation;
    keyWanted();
    clear();
    const collection = ui.collection.value;
    if (!collection) return;
    const params = new URLSearchParams();
    const nearPixels = number(ui.nearPixels, 0, 1);
    const similar = number(ui.similar, -1, 1);
    if (nearPixels !== null) params.set("near_pixels", String(nearPixels));
    if (similar !== null) params.set("similar", String(similar));
    const query = params.toString();
    setMessage("Looking for duplicates in " + collection + "… (the first time reads and compares images)", "loading");
    document.body.classList.add("busy");
    try {
      const body = await api(relative("/v1/collections/" + encodeURIComponent(collection) + "/duplicates") +
                             (query ? "?" + query : ""));
      if (mine !== generation) return;
      render(body, ui.level.value);
      history.replaceState(null, "", location.pathname + "?" + new URLSearchParams({ c: collection }).toString());
    } catch (error) {
      if (mine === generation) setMessage(errorText(error), "error");
    } finally {
      if (mine === generation) document.body.classList.remove("busy");
    }
  }

  ui.form.addEventListener("submit", (event) => { event.preventDefault(); find(); });
  ui.collection.addEventListener("change", find);
  ui.level.addEventListener("change", find);  // the server keeps the report: a level change is cheap
  ui.forgetKey.addEventListener("click", () => {
    storeKey("");
    clear();
    setMessage("The API key is forgotten; the next request asks for one.", "info");
  });

  async function start() {
    setMessage("Loading collections…", "loading");
    try {
      await loadCollections();
    } catch (error) {
      setMessage(errorText(error), "error");
      return;
    }
    if (!collections.length) {
      setMessage("This server has no collections: start it with --collection NAME=DIR.", "empty");
      return;
    }
    find();
  }

  start();
})();
