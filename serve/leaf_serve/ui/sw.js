// The offline page's service worker (served as /sw.js with BUILD and SHELL defined above this line).
// It keeps the diagnosis page and ONNX Runtime Web in a cache named after BUILD, so the page opens
// with no network. The model itself is not here: offline.js keeps it in IndexedDB, checked by sha256.
/* global BUILD, SHELL */
const CACHE = `leaf-page-${BUILD}`;
const NETWORK_WAIT_MS = 4000; // a field network that hangs is no network: show the cached page
const VENDOR = "/ui/vendor/";

self.addEventListener("install", (event) => {
  // Every file or none: a page without its runtime would open and then fail at the first photo.
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  const old = caches.keys().then((keys) => keys.filter((k) => k.startsWith("leaf-page-") && k !== CACHE));
  event.waitUntil(
    old.then((keys) => Promise.all(keys.map((k) => caches.delete(k)))).then(() => self.clients.claim()),
  );
});

function withTimeout(promise, ms) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("network timeout")), ms);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}

// The page's own files: the network first (online, the page is always the server's current one),
// the cache when the network fails. The runtime never changes within a BUILD: the cache first.
async function answer(request, path) {
  const cache = await caches.open(CACHE);
  if (path.startsWith(VENDOR)) {
    const hit = await cache.match(path);
    if (hit) return hit;
  }
  try {
    const response = await withTimeout(fetch(request), NETWORK_WAIT_MS);
    if (response.ok) await cache.put(path, response.clone());
    return response;
  } catch (error) {
    const hit = await cache.match(path);
    if (hit) return hit;
    throw error;
  }
}

self.addEventListener("fetch", (event) => {
  const { request } = event;
  const where = new URL(request.url);
  if (request.method !== "GET" || where.origin !== self.location.origin) return;
  const path = request.mode === "navigate" && where.pathname === "/" ? "/" : where.pathname;
  if (!SHELL.includes(path)) return; // /classify, /feedback, the model, the card: straight to the network
  event.respondWith(answer(request, path));
});
