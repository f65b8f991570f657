// One EventSource on /feed and the state every view of it needs. The SharedWorker
// (feed-worker.js) runs one per browser; without SharedWorker, the tab elected leader
// runs it (page.js). Event ids are opaque: kept only to hand back as Last-Event-ID.
"use strict";

const FEED_KEEP = 200; // messages a view shows; older ones scroll away
const FEED_REOPEN_MS = 2000; // the server's own `retry:` hint

class FeedHub {
  // `send(update)` receives every update for the views:
  // {type: "snapshot" | "message" | "delete" | "reset" | "state", ...}.
  constructor(send) {
    this.send = send;
    this.messages = new Map(); // id -> message, oldest first
    this.lastEventId = "";
    this.state = "connecting";
    this.detail = "";
    this.repeats = 0; // message events for an id already shown: a resume must make none
    this.source = null;
    this.opened = false;
    this.reopen = null;
  }

  // Continue where another hub left off (a leader tab taking over): no gap, no repeat.
  adopt(messages, lastEventId) {
    for (const m of messages) this.messages.set(m.id, m);
    this.lastEventId = lastEventId || "";
    this.opened = Boolean(lastEventId);
  }

  snapshot() {
    return {
      type: "snapshot", messages: [...this.messages.values()], state: this.state,
      detail: this.detail, lastEventId: this.lastEventId, repeats: this.repeats,
    };
  }

  start() {
    if (this.source === null && this.reopen === null) this.open();
  }

  open() {
    this.reopen = null;
    // A fresh EventSource cannot set Last-Event-ID; the query parameter carries it.
    const url = this.lastEventId
      ? "/feed?last_event_id=" + encodeURIComponent(this.lastEventId) : "/feed";
    const source = new EventSource(url);
    this.source = source;
    source.onopen = () => {
      // An open after an earlier one is a reconnect that resumed from lastEventId,
      // unless the server says `reset` next.
      this.setState(this.opened ? "resumed" : "live", "");
      this.opened = true;
    };
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up for good (an error status): start over by ourselves.
        source.close();
        this.source = null;
        this.reopen = setTimeout(() => this.open(), FEED_REOPEN_MS);
      }
      this.setState("reconnecting", "the connection to the feed was lost; retrying");
    };
    source.addEventListener("message", e => this.onMessage(e));
    source.addEventListener("delete", e => this.onDelete(e));
    source.addEventListener("reset", e => this.onReset(e));
    source.addEventListener("resume", e => this.onResume(e));
  }

  track(e) {
    if (e.lastEventId) this.lastEventId = e.lastEventId;
  }

  onMessage(e) {
    this.track(e);
    const m = JSON.parse(e.data);
    if (this.messages.has(m.id)) {
      this.repeats += 1;
      this.send({type: "repeat", id: m.id, repeats: this.repeats});
      return;
    }
    this.messages.set(m.id, m);
    if (this.messages.size > FEED_KEEP) this.messages.delete(this.messages.keys().next().value);
    this.send({type: "message", message: m, lastEventId: this.lastEventId});
  }

  onDelete(e) {
    this.track(e);
    const {id} = JSON.parse(e.data);
    this.messages.delete(id);
    this.send({type: "delete", id, lastEventId: this.lastEventId});
  }

  onReset(e) {
    this.track(e);
    const {reason} = JSON.parse(e.data);
    // The position could not be served: drop what we show; history follows.
    this.messages.clear();
    this.send({type: "reset", reason, lastEventId: this.lastEventId});
    this.setState("reset", reason);
  }

  onResume(e) {
    this.track(e);
    const data = JSON.parse(e.data);
    if (data.last_event_id) this.lastEventId = data.last_event_id;
    // The server ends the stream now; EventSource reconnects with Last-Event-ID.
    this.setState("reconnecting", data.reason);
  }

  setState(state, detail) {
    this.state = state;
    this.detail = detail;
    this.send({type: "state", state, detail, lastEventId: this.lastEventId});
  }
}
