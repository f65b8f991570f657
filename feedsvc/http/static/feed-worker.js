// A SharedWorker: one /feed stream for every tab of this origin. Browsers allow six
// HTTP/1.1 connections per host; an EventSource per tab would hang the sixth tab.
"use strict";
importScripts("/static/feed-hub.js");

const ports = new Set();
const hub = new FeedHub(update => {
  for (const port of ports) port.postMessage(update);
});

onconnect = event => {
  const port = event.ports[0];
  ports.add(port);
  port.onmessage = e => {
    if (e.data && e.data.type === "bye") ports.delete(port);
  };
  port.postMessage(hub.snapshot());
  hub.start();
};
