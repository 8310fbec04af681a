"use strict";
// The `pneumonia-cxr web` folder's service worker: after the first visit every file the page
// needs (listed in files.json) comes from the cache, so the page works offline and installs as
// an app. `web` writes CACHE (a digest of the model and the page) above this text, so a
// rewritten folder is a new worker and a new cache. It only caches GETs of its own origin.
self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const listing = await (await fetch("files.json", { cache: "no-store" })).json();
    const cache = await caches.open(CACHE);
    await cache.addAll(listing.files.map((file) => new Request(file, { cache: "no-store" })));
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name.startsWith("pneumonia-cxr-") && name !== CACHE) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET" || new URL(request.url).origin !== self.location.origin) return;
  event.respondWith((async () => {
    const cache = await caches.open(CACHE);
    return (await cache.match(request, { ignoreSearch: true })) || fetch(request);
  })());
});
