"""`GET /`: a small page that shows the live feed and posts messages, for people to try."""

from __future__ import annotations

from litestar import get
from litestar.response import Response

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>feedsvc</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:15px/1.4 system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#222}
 form{display:flex;gap:.5rem;margin-bottom:1rem} input{padding:.4rem} #text{flex:1}
 #status{color:#666;font-size:13px} li{list-style:none;border-bottom:1px solid #eee;padding:.4rem 0}
 .who{font-weight:600} .when{color:#888;font-size:12px;margin-left:.4rem} ul{padding:0}
</style></head><body>
<h1>feedsvc</h1>
<form id="post"><input id="author" placeholder="author" maxlength="32" required>
<input id="text" placeholder="what's happening?" maxlength="280" required>
<button>Post</button></form>
<div id="status">connecting…</div><ul id="feed"></ul>
<p><a href="/schema">API documentation</a></p>
<script>
const feed = document.getElementById("feed"), status = document.getElementById("status");
const seen = new Set();
function show(m) {
  if (seen.has(m.id)) return; seen.add(m.id);
  const li = document.createElement("li"), who = document.createElement("span"),
        when = document.createElement("span"), text = document.createElement("div");
  who.className = "who"; who.textContent = "@" + m.author;
  when.className = "when"; when.textContent = new Date(m.created_at).toLocaleTimeString();
  text.textContent = m.text; li.append(who, when, text); feed.prepend(li);
  while (feed.children.length > 200) feed.lastChild.remove();
}
const source = new EventSource("/feed");
source.onopen = () => status.textContent = "live";
source.onerror = () => status.textContent = "reconnecting…";
source.addEventListener("message", e => show(JSON.parse(e.data)));
source.addEventListener("reset", () => { feed.replaceChildren(); seen.clear(); });
document.getElementById("post").onsubmit = async e => {
  e.preventDefault();
  const r = await fetch("/messages", {method: "POST", headers: {"content-type": "application/json"},
    body: JSON.stringify({author: author.value, text: text.value})});
  const body = await r.json();
  status.textContent = r.ok ? "posted" : (body.detail || r.statusText);
  if (r.ok) text.value = "";
};
</script></body></html>
"""


@get("/", include_in_schema=False)
async def index() -> Response[str]:
    """The demo page."""
    return Response(_PAGE, media_type="text/html")
