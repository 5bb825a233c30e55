// The offline page (leaf-serve --offline-page): the served version's model kept on the device and run with
// ONNX Runtime Web when the server cannot be reached; photos marked wrong meanwhile wait here and go to
// /feedback when the network is back. Off (every function a pass-through) unless settings say it is on.
import { readJSON, show, url } from "/ui/common.js";
import { photoPixels } from "/ui/preprocess.js";

const DB_NAME = "leaf-offline";
const MODEL = "model"; // key "current": { bundle, etag, data } - swapped in one transaction, never half
const QUEUE = "queue"; // photos marked wrong with no network: { photo, name, label, at }
export const MAX_QUEUED = 20; // a phone's storage is not an inbox: past this the user is told to wait
const CHECK_EVERY_MS = 60_000; // how often an open page asks whether a new version is served
const RETRY_EVERY_MS = 15_000; // how often waiting photos are tried while some wait
const NETWORK_WAIT_MS = 15_000; // past this a /classify that has not answered counts as no network

const $ = (id) => document.getElementById(id);
const state = { enabled: false, stored: null, session: null, sessionFor: null, ort: null, sending: false };

// --- IndexedDB, promised ---------------------------------------------------------------------------------
function openDB() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => {
      request.result.createObjectStore(MODEL);
      request.result.createObjectStore(QUEUE, { autoIncrement: true });
    };
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function tx(store, mode, work) {
  const db = await openDB();
  return new Promise((resolve, reject) => {
    const t = db.transaction(store, mode);
    const result = work(t.objectStore(store));
    t.oncomplete = () => resolve(result && "result" in result ? result.result : undefined);
    t.onerror = t.onabort = () => reject(t.error);
  }).finally(() => db.close());
}

const storedModel = () => tx(MODEL, "readonly", (s) => s.get("current"));
const queued = () => tx(QUEUE, "readonly", (s) => s.getAll());
const queuedKeys = () => tx(QUEUE, "readonly", (s) => s.getAllKeys());

// --- the panel ---------------------------------------------------------------------------------------------
function kb(bytes) {
  return bytes >= 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${Math.max(1, Math.round(bytes / 1e3))} kB`;
}

function say(text) {
  $("offline-status").textContent = text;
}

function describe() {
  const b = state.stored && state.stored.bundle;
  if (!b) return "Getting this page ready to work without a network…";
  return `Ready without a network: version ${b.version} of the model (${b.variant.toUpperCase()}, ${kb(b.bytes)}) is on this device.`;
}

async function showQueue() {
  const count = (await queuedKeys()).length;
  $("offline-queue").textContent = count
    ? `${count} photo${count === 1 ? "" : "s"} marked wrong without a network will be sent when the network is back.`
    : "";
  show($("offline-queue-actions"), count > 0);
  document.documentElement.dataset.queued = String(count);
}

// --- the model: notice a new version, download it, check it, swap it ----------------------------------------
function hex(buffer) {
  return [...new Uint8Array(buffer)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function checkForUpdate() {
  let response;
  try {
    const etag = state.stored && state.stored.etag;
    response = await fetch(url("/offline/bundle.json"), { headers: etag ? { "If-None-Match": etag } : {} });
  } catch {
    return; // no network: keep what is here
  }
  if (response.status === 304) return;
  let bundle;
  try {
    bundle = await readJSON(response);
  } catch (error) {
    say(`${describe()} (The server could not say which version it serves: ${error.message}.)`);
    return;
  }
  const etag = response.headers.get("ETag");
  const current = state.stored && state.stored.bundle;
  if (current && current.version === bundle.version && current.sha256 === bundle.sha256) {
    await keep({ ...state.stored, bundle, etag }); // thresholds may change without a new file
    return;
  }
  say(current ? `Downloading version ${bundle.version} in the background…` : describe());
  await download(bundle, etag);
}

async function download(bundle, etag) {
  let data;
  try {
    // no-store: a damaged copy in the HTTP cache would otherwise be revalidated (304) and come back again.
    data = await (await fetch(url(bundle.url), { cache: "no-store" })).arrayBuffer();
  } catch {
    say(`${describe()} (The download of version ${bundle.version} stopped; it will be tried again.)`);
    return;
  }
  const digest = hex(await crypto.subtle.digest("SHA-256", data));
  if (digest !== bundle.sha256) {
    // Half a file, or another one: never used. The version already here stays the one that runs.
    say(`${describe()} (The download of version ${bundle.version} was incomplete; it will be tried again.)`);
    return;
  }
  await keep({ bundle, etag, data });
}

async function keep(record) {
  await tx(MODEL, "readwrite", (s) => s.put(record, "current"));
  state.stored = record;
  document.documentElement.dataset.offlineVersion = record.bundle.version;
  say(describe());
}

// --- diagnosis on the device --------------------------------------------------------------------------------
async function runtime() {
  if (!state.ort) {
    const ort = await import("/ui/vendor/ort.wasm.min.mjs");
    ort.env.wasm.wasmPaths = new URL("/ui/vendor/", window.location.origin).href;
    ort.env.wasm.numThreads = 1; // threads need cross-origin isolation headers this page does not send
    ort.env.wasm.proxy = false;
    state.ort = ort;
  }
  return state.ort;
}

async function session() {
  const { bundle, data } = state.stored;
  if (state.sessionFor !== bundle.sha256) {
    const ort = await runtime();
    state.session = await ort.InferenceSession.create(new Uint8Array(data), { executionProviders: ["wasm"] });
    state.sessionFor = bundle.sha256;
  }
  return state.session;
}

// The abstain rule of serve/leaf_serve/trust.py: not a leaf first, then low confidence.
export function verdict(probs, ood, oodThreshold, confidenceThreshold) {
  const score = ood !== null && Number.isFinite(ood) ? ood : null;
  if (oodThreshold !== null && oodThreshold !== undefined && (score === null || score > oodThreshold)) {
    return { abstain: true, reason: "not_a_leaf", score };
  }
  const top = probs.length ? Math.max(...probs) : Number.NaN;
  if (!(Number.isFinite(top) && top >= confidenceThreshold)) return { abstain: true, reason: "low_confidence", score };
  return { abstain: false, reason: null, score };
}

/** The model's input for a photo, as leaf_common.imaging makes it (the test reads this). */
export async function inputTensor(blob) {
  const bundle = state.stored.bundle;
  const pixels = await photoPixels(blob, bundle.image_size);
  return bundle.input.dtype === "uint8" ? pixels : Float32Array.from(pixels);
}

/** A photo diagnosed here, answered in /classify's shape. */
export async function diagnoseHere(blob) {
  const { bundle } = state.stored;
  const ort = await runtime();
  const run = await session();
  const [h, w] = bundle.image_size;
  const type = bundle.input.dtype === "uint8" ? "uint8" : "float32";
  const feeds = { [bundle.input.name]: new ort.Tensor(type, await inputTensor(blob), [1, h, w, 3]) };
  const outputs = await run.run(feeds);
  const probs = Array.from(outputs[bundle.output.name].data);
  const ood = bundle.ood ? Number(outputs[bundle.ood.output].data[0]) : null;
  const v = verdict(probs, ood, bundle.ood && bundle.ood.threshold, bundle.confidence_threshold);
  const order = probs.map((p, i) => i).sort((a, b) => probs[b] - probs[a] || a - b); // numpy's stable argsort
  const predictions = order.slice(0, bundle.top_k).map((i) => ({
    label: bundle.labels[i].label,
    display: bundle.labels[i].display,
    probability: Number.isFinite(probs[i]) ? probs[i] : null,
  }));
  const top = Math.max(...probs);
  return {
    model: bundle.model,
    version: bundle.version,
    predictions,
    confidence_threshold: bundle.confidence_threshold,
    confident: Number.isFinite(top) && top >= bundle.confidence_threshold,
    captured: null,
    abstain: v.abstain,
    abstain_reason: v.reason,
    ood_score: v.score,
    where: "Diagnosed on this device (no network).",
    offline: true,
  };
}

function noNetwork(error) {
  return error instanceof TypeError || (error && error.name === "AbortError"); // fetch's own failures
}

/**
 * /classify when the server answers, the device's copy when it cannot be reached.
 * @param {Blob} photo
 * @param {(signal: AbortSignal) => Promise<object>} online sends the photo to /classify
 */
export async function classify(photo, online) {
  if (!state.enabled) return online(undefined);
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), NETWORK_WAIT_MS);
  try {
    const body = await online(abort.signal);
    body.where = "Diagnosed on the server.";
    return body;
  } catch (error) {
    if (!noNetwork(error)) throw error; // the server answered: its error is the answer
    if (!(state.stored && state.stored.bundle)) {
      throw new Error("there is no network, and the model has not been saved on this device yet");
    }
    return diagnoseHere(photo);
  } finally {
    clearTimeout(timer);
  }
}

// --- photos marked wrong with no network ----------------------------------------------------------------
/**
 * /feedback now, or kept on the device for later when the server cannot be reached.
 * @returns {Promise<object|null>} the server's answer, or null when the photo was queued
 */
export async function feedback(photo, label, online) {
  try {
    return await online();
  } catch (error) {
    if (!state.enabled || !noNetwork(error)) throw error;
  }
  const count = (await queuedKeys()).length;
  if (count >= MAX_QUEUED) {
    throw new Error(`there is no network and ${count} photos already wait on this device; send or clear them first`);
  }
  const name = photo.name || "leaf";
  await tx(QUEUE, "readwrite", (s) => s.add({ photo, name, label, at: new Date().toISOString() }));
  await showQueue();
  return null;
}

// A refusal the server will repeat forever (400 not an image, 404 capture off, 413 too big) drops the photo;
// 429 and 5xx are "not now": it stays for the next try.
const refusedForGood = (error) => error.status >= 400 && error.status < 500 && error.status !== 429;

async function sendOne(key, item) {
  const form = new FormData();
  form.append("file", item.photo, item.name);
  const query = item.label ? `?label=${encodeURIComponent(item.label)}` : "";
  let refused = null;
  try {
    await readJSON(await fetch(url(`/feedback${query}`), { method: "POST", body: form }));
  } catch (error) {
    if (!refusedForGood(error)) throw error;
    refused = error.message;
  }
  await tx(QUEUE, "readwrite", (s) => s.delete(key));
  return refused;
}

export async function sendQueued() {
  if (!state.enabled || state.sending) return;
  state.sending = true;
  try {
    const keys = await queuedKeys();
    const items = await queued();
    const refused = [];
    for (let i = 0; i < keys.length; i++) {
      const reason = await sendOne(keys[i], items[i]);
      if (reason) refused.push(`${items[i].name}: ${reason}`);
    }
    const sent = keys.length - refused.length;
    if (keys.length) {
      $("offline-queue-status").textContent =
        `Sent ${sent} waiting photo(s) for review.` +
        (refused.length ? ` The server refused ${refused.length}: ${refused.join("; ")}` : "");
    }
  } catch (error) {
    if (!noNetwork(error)) $("offline-queue-status").textContent = `Waiting photos not sent: ${error.message}`;
  } finally {
    state.sending = false;
    await showQueue();
  }
}

async function clearQueued() {
  await tx(QUEUE, "readwrite", (s) => s.clear());
  $("offline-queue-status").textContent = "The waiting photos were deleted from this device.";
  await showQueue();
}

// --- start --------------------------------------------------------------------------------------------------
function addManifest() {
  const link = document.createElement("link");
  link.rel = "manifest";
  link.href = "/manifest.webmanifest";
  document.head.append(link);
}

export async function startOffline(settings) {
  if (!settings || !settings.offline_page) return;
  if (!("serviceWorker" in navigator) || !window.isSecureContext || !window.indexedDB) {
    show($("offline"), true);
    say("This browser cannot keep the page for use without a network (it needs HTTPS and a current browser).");
    return;
  }
  state.enabled = true;
  addManifest();
  show($("offline"), true);
  $("offline-send").addEventListener("click", sendQueued);
  $("offline-clear").addEventListener("click", clearQueued);
  try {
    await navigator.serviceWorker.register("/sw.js", { scope: "/" });
  } catch (error) {
    say(`The page could not be kept for use without a network: ${error.message}`);
  }
  state.stored = (await storedModel()) || null;
  if (state.stored) document.documentElement.dataset.offlineVersion = state.stored.bundle.version;
  say(describe());
  await showQueue();
  window.addEventListener("online", () => {
    checkForUpdate();
    sendQueued();
  });
  setInterval(checkForUpdate, CHECK_EVERY_MS);
  setInterval(() => {
    if (document.documentElement.dataset.queued !== "0") sendQueued();
  }, RETRY_EVERY_MS);
  await checkForUpdate();
  await sendQueued();
}
