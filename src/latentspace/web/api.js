// What the pages share (index.html: search; duplicates.html: duplicate groups): calls to the
// server's /v1 routes with the API key, the key dialog, error texts and thumbnails.
// Plain JavaScript, no build step; a page loads this before its own script.
"use strict";

window.latentspace = (function () {
  const KEY_STORE = "latentspace.apiKey";
  const THUMB_PARALLEL = 6; // thumbnails fetched at once

  const $ = (id) => document.getElementById(id);
  // The key dialog and the "Forget API key" button: the same markup on every page.
  const ui = {
    dialog: $("key-dialog"), keyForm: $("key-form"), keyInput: $("key-input"), keyMessage: $("key-message"),
    keyCancel: $("key-cancel"), forgetKey: $("forget-key"),
  };

  // -- the API key ------------------------------------------------------------------------------
  function storedKey() {
    try { return sessionStorage.getItem(KEY_STORE) || ""; } catch (e) { return ""; }
  }

  function storeKey(key) {
    try {
      if (key) sessionStorage.setItem(KEY_STORE, key); else sessionStorage.removeItem(KEY_STORE);
    } catch (e) { /* storage off: the key lasts until the page closes */ }
    memoryKey = key;
    ui.forgetKey.hidden = !key;
  }
  let memoryKey = storedKey();
  ui.forgetKey.hidden = !memoryKey;

  let keyPrompt = null;   // one dialog for all the requests that were refused at once
  let keyResolve = null;
  let keyDeclined = false; // the dialog was cancelled: ask again only after keyWanted()

  function askForKey(message) {
    if (!keyPrompt) {
      keyPrompt = new Promise((resolve) => { keyResolve = resolve; });
      ui.keyMessage.textContent = message;
      ui.keyInput.value = "";
      ui.dialog.showModal();
      ui.keyInput.focus();
    }
    return keyPrompt;
  }

  function finishKeyPrompt(key) {
    if (ui.dialog.open) ui.dialog.close();
    const resolve = keyResolve;
    keyPrompt = keyResolve = null;
    keyDeclined = !key;
    if (key) storeKey(key);
    if (resolve) resolve(key || null);
  }

  ui.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = ui.keyInput.value.trim();
    if (key) finishKeyPrompt(key);
  });
  ui.keyCancel.addEventListener("click", () => finishKeyPrompt(null));
  ui.dialog.addEventListener("cancel", (event) => { event.preventDefault(); finishKeyPrompt(null); });

  // The user acts again (a new search, a reload of the groups): a cancelled dialog may ask again.
  function keyWanted() { keyDeclined = false; }

  // -- requests ---------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  async function errorDetail(response) {
    const text = await response.text().catch(() => "");
    try {
      const detail = JSON.parse(text).detail;
      if (typeof detail === "string") return detail;
      if (detail !== undefined) return JSON.stringify(detail);
    } catch (e) { /* not JSON */ }
    return text.trim().slice(0, 300) || response.statusText || "request failed";
  }

  // fetch() with the bearer key; a 401 asks for a key and tries again. -> JSON or a Blob.
  async function api(path, { method = "GET", json, form, blob = false } = {}) {
    for (let attempt = 0; ; attempt++) {
      const headers = {};
      const key = memoryKey;
      if (key) headers.Authorization = "Bearer " + key;
      let body;
      if (json !== undefined) {
        headers["Content-Type"] = "application/json";
        body = JSON.stringify(json);
      } else if (form) {
        body = form;  // the browser writes the multipart Content-Type
      }
      let response;
      try {
        response = await fetch(path, { method, headers, body });
      } catch (e) {
        throw new ApiError(0, "could not reach the server (" + e.message + ")");
      }
      if (response.status === 401 && attempt < 5) {
        const detail = await errorDetail(response);
        if (memoryKey && memoryKey !== key) continue;  // a key was entered meanwhile: use it
        if (keyDeclined) throw new ApiError(401, detail + " — no API key was entered");
        const entered = await askForKey(key ? "The server refused this key (" + detail + "). Enter another one."
                                            : "This server needs an API key (" + detail + ").");
        if (!entered) throw new ApiError(401, detail + " — no API key was entered");
        continue;
      }
      if (!response.ok) throw new ApiError(response.status, await errorDetail(response));
      return blob ? response.blob() : response.json();
    }
  }

  // Paths relative to the page, so the pages also work behind a proxy that adds a prefix.
  const relative = (path) => path.replace(/^\/+/, "");

  function errorText(error) {
    if (error instanceof ApiError) return error.status ? "Error " + error.status + ": " + error.message
                                                       : "Error: " + error.message;
    return "Error: " + (error && error.message ? error.message : String(error));
  }

  // -- thumbnails -------------------------------------------------------------------------------
  // A few at a time, in the order asked; each one's object URL is kept until clearThumbnails().
  const thumbQueue = [];
  let thumbsRunning = 0;
  let blobUrls = [];

  function queueThumbnail(thumbnail, img, size) {
    thumbQueue.push({ url: relative(thumbnail) + "?size=" + size, img });
    pumpThumbnails();
  }

  function pumpThumbnails() {
    while (thumbsRunning < THUMB_PARALLEL && thumbQueue.length) {
      const job = thumbQueue.shift();
      thumbsRunning++;
      loadThumbnail(job).finally(() => { thumbsRunning--; pumpThumbnails(); });
    }
  }

  async function loadThumbnail(job) {
    const frame = job.img.parentElement;
    try {
      const blob = await api(job.url, { blob: true });
      if (!job.img.isConnected) return;
      const url = URL.createObjectURL(blob);
      blobUrls.push(url);
      job.img.src = url;
      frame.classList.add("loaded");
    } catch (error) {
      if (!job.img.isConnected) return;
      frame.classList.add("missing");
      frame.dataset.note = error.status === 404 ? "no preview" : "preview failed";
      frame.title = error.message;
    }
  }

  function clearThumbnails() {
    thumbQueue.length = 0;
    for (const url of blobUrls) URL.revokeObjectURL(url);
    blobUrls = [];
  }

  // -- names ------------------------------------------------------------------------------------
  function baseName(where) {
    const parts = String(where).split(/[\\/]/).filter(Boolean);
    return parts.length ? parts[parts.length - 1] : String(where);
  }

  return {
    api, ApiError, relative, errorText, storeKey, keyWanted, queueThumbnail, clearThumbnails, baseName,
  };
})();
