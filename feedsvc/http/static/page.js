// The page at `/`: renders the feed that one shared hub reads, and posts messages.
// Transport, best first: a SharedWorker (one /feed stream per browser); else a leader
// tab elected with Web Locks that shares its stream over a BroadcastChannel, the next
// tab taking over from the last event id when it closes; else a stream of its own.
"use strict";

const feed = document.getElementById("feed");
const stateBox = document.getElementById("state");
const notice = document.getElementById("notice");
const STATE_WORDS = {
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
  resumed: "live again: resumed where it left off, nothing missed",
  reset: "reset: the feed was reloaded from the latest messages",
};

const view = {messages: new Map(), lastEventId: "", repeats: 0};

function render(m) {
  const li = document.createElement("li");
  const who = document.createElement("span");
  const when = document.createElement("span");
  const text = document.createElement("div");
  li.dataset.id = m.id;
  who.className = "who";
  who.textContent = "@" + m.author;
  when.className = "when";
  when.textContent = new Date(m.created_at).toLocaleTimeString();
  text.className = "text";
  text.textContent = m.text;
  li.append(who, when, text);
  feed.prepend(li);
}

function add(m) {
  if (view.messages.has(m.id)) {
    view.repeats += 1;
    feed.dataset.repeats = String(view.repeats);
    return;
  }
  view.messages.set(m.id, m);
  render(m);
  while (feed.children.length > FEED_KEEP) {
    view.messages.delete(feed.lastChild.dataset.id);
    feed.lastChild.remove();
  }
}

function remove(id) {
  view.messages.delete(id);
  for (const li of feed.querySelectorAll("li")) if (li.dataset.id === id) li.remove();
}

function clear() {
  view.messages.clear();
  feed.replaceChildren();
}

function showState(state, detail) {
  stateBox.dataset.state = state;
  stateBox.textContent = STATE_WORDS[state] || state;
  stateBox.title = detail || "";
}

function apply(update) {
  if (update.lastEventId) view.lastEventId = update.lastEventId;
  switch (update.type) {
    case "snapshot":
      clear();
      for (const m of update.messages) add(m);
      view.repeats = update.repeats;
      feed.dataset.repeats = String(view.repeats);
      showState(update.state, update.detail);
      break;
    case "message": add(update.message); break;
    case "repeat":
      view.repeats = update.repeats;
      feed.dataset.repeats = String(view.repeats);
      break;
    case "delete": remove(update.id); break;
    case "reset": clear(); break;
    case "state": showState(update.state, update.detail); break;
  }
}

function viaSharedWorker() {
  const worker = new SharedWorker("/static/feed-worker.js", {name: "feedsvc-feed"});
  worker.port.onmessage = e => apply(e.data);
  worker.port.start();
  addEventListener("pagehide", () => worker.port.postMessage({type: "bye"}));
}

function viaLeaderTab() {
  const channel = new BroadcastChannel("feedsvc-feed");
  let hub = null;
  channel.onmessage = e => {
    if (e.data.type === "hello") {
      if (hub) channel.postMessage(hub.snapshot());
    } else if (!hub) {
      apply(e.data);
    }
  };
  // The lock is held while this tab lives; when it closes, the browser hands it to the
  // next tab waiting, which resumes from the last event id the old leader broadcast.
  navigator.locks.request("feedsvc-feed-leader", () => {
    document.body.dataset.role = "leader";
    hub = new FeedHub(update => {
      apply(update);
      channel.postMessage(update);
    });
    hub.adopt([...view.messages.values()], view.lastEventId);
    hub.start();
    return new Promise(() => {});
  });
  channel.postMessage({type: "hello"});
}

function transport() {
  if (typeof SharedWorker === "function") {
    viaSharedWorker();
    return "shared-worker";
  }
  if (typeof BroadcastChannel === "function" && navigator.locks) {
    viaLeaderTab();
    return "leader-tab";
  }
  new FeedHub(apply).start();
  return "own-stream";
}

function seconds(retryAfter) {
  const n = Number(retryAfter);
  return Number.isFinite(n) && n > 0 ? n : 1;
}

function plainWords(status, body, retryAfter) {
  const detail = body && body.detail ? body.detail : "";
  switch (status) {
    case 429:
      return `The service is busy right now. Please try again in ${seconds(retryAfter)} s.`;
    case 503:
      return `The service cannot take messages right now. Please try again in ${seconds(retryAfter)} s.`;
    case 400:
    case 422:
      return `That message was not accepted: ${detail || "check the author and the text"}.`;
    case 413:
      return "That message is too long.";
    default:
      return `The message was not posted (${status}${detail ? ": " + detail : ""}).`;
  }
}

function say(text, ok) {
  notice.textContent = text;
  notice.dataset.kind = ok ? "ok" : "error";
}

document.getElementById("post").addEventListener("submit", async e => {
  e.preventDefault();
  const author = document.getElementById("author");
  const text = document.getElementById("text");
  let response;
  try {
    response = await fetch("/messages", {
      method: "POST",
      headers: {"content-type": "application/json"},
      body: JSON.stringify({author: author.value, text: text.value}),
    });
  } catch {
    say("The service could not be reached. Please try again.", false);
    return;
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: a proxy's answer; the status says enough
  }
  if (response.status === 202) {
    say("Posted.", true);
    text.value = "";
  } else {
    say(plainWords(response.status, body, response.headers.get("retry-after")), false);
  }
});

document.body.dataset.transport = transport();
