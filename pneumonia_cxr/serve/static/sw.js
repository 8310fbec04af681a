"use strict";
// The `pneumonia-cxr web` folder's service worker: after the first visit every file the page
// needs (listed in files.json, versioned by the model's sha256) comes from the cache, so the
// page works offline and installs as an app. Nothing is sent anywhere: it only caches GETs.
self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const listing = await (await fetch("files.json", { cache: "no-store" })).json();
    const cache = await caches.open(listing.cache);
    await cache.addAll(listing.files);
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    const listing = await (await caches.match("files.json") || fetch("files.json")).json();
    for (const name of await caches.keys()) if (name !== listing.cache) await caches.delete(name);
    await self.clients.claim();
  })());
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET" || new URL(request.url).origin !== self.location.origin) return;
  event.respondWith((async () => (await caches.match(request, { ignoreSearch: true })) || fetch(request))());
});
