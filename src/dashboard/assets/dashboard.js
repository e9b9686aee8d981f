// Cygni dashboard: refreshes the page's live sections, streams logs, and
// sends the few changes a page offers to /api/v1 with the CSRF token.
// Text from the server is only ever set with textContent.
(function () {
  "use strict";
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";

  function flash(text, bad) {
    const el = document.getElementById("flash");
    if (!el) return;
    el.textContent = text;
    el.className = "show" + (bad ? " bad" : "");
    clearTimeout(flash.timer);
    flash.timer = setTimeout(() => { el.className = ""; }, bad ? 8000 : 4000);
  }

  // Fetch this page again and swap in its data-live sections.
  let refreshing = false;
  async function refresh() {
    if (refreshing) return;
    refreshing = true;
    try {
      const r = await fetch(location.pathname, { credentials: "same-origin", cache: "no-store" });
      if (r.redirected && new URL(r.url).pathname === "/login") { location.href = "/login"; return; }
      if (!r.ok) return;
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      for (const fresh of doc.querySelectorAll("[data-live][id]")) {
        const old = document.getElementById(fresh.id);
        if (old && old.innerHTML !== fresh.innerHTML) old.replaceWith(document.adoptNode(fresh));
      }
    } catch (e) {
      // The daemon may be restarting; the next tick tries again.
    } finally {
      refreshing = false;
    }
  }

  const poll = Number(document.body.dataset.poll || 0);
  if (poll > 0) {
    setInterval(() => { if (document.visibilityState === "visible") refresh(); }, poll);
  }

  async function api(method, path, body) {
    const r = await fetch("/api/v1" + path, {
      method,
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await r.json(); } catch (e) { /* not JSON */ }
    if (!r.ok) throw new Error((data && data.message) || r.status + " " + r.statusText);
    return data;
  }

  document.addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-rollback], button[data-unset]");
    if (!b) return;
    ev.preventDefault();
    const app = encodeURIComponent(b.dataset.app);
    b.disabled = true;
    try {
      if (b.dataset.rollback) {
        flash("Rolling back to " + b.dataset.rollback + "…");
        const done = api("POST", "/apps/" + app + "/releases", { release: b.dataset.rollback });
        refresh();
        const r = await done;
        flash("Released v" + r.version);
      } else {
        flash("Unsetting " + b.dataset.unset + "…");
        const r = await api("PATCH", "/apps/" + app + "/config-vars", { [b.dataset.unset]: null });
        flash(r.release ? "Released v" + r.release : "Stored");
      }
    } catch (e) {
      flash(e.message, true);
    } finally {
      b.disabled = false;
      refresh();
    }
  });

  document.addEventListener("submit", async (ev) => {
    const f = ev.target;
    if (f.matches("form[data-config-set]")) {
      ev.preventDefault();
      const key = f.elements.key.value.trim();
      const button = f.querySelector("button");
      button.disabled = true;
      try {
        flash("Setting " + key + "…");
        const r = await api("PATCH", "/apps/" + encodeURIComponent(f.dataset.app) + "/config-vars",
          { [key]: f.elements.value.value });
        flash(r.release ? "Released v" + r.release : "Stored");
        f.reset();
      } catch (e) {
        flash(e.message, true);
      } finally {
        button.disabled = false;
        refresh();
      }
    }
  });

  // A one-time link's page signs in without another click.
  const auto = document.querySelector("form[data-autosubmit]");
  if (auto) auto.submit();

  // Live logs: the API's SSE stream, with the session cookie.
  const log = document.getElementById("log");
  if (log && window.EventSource) {
    const state = document.getElementById("log-state");
    const app = encodeURIComponent(log.dataset.app);
    const src = new EventSource("/api/v1/apps/" + app + "/logs?tail=true&lines=50");
    const KEEP = 500;
    src.onopen = () => { state.textContent = "live"; };
    src.onerror = () => { state.textContent = "reconnecting…"; };
    src.onmessage = (ev) => {
      let line;
      try { line = JSON.parse(ev.data); } catch (e) { return; }
      const stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      const row = document.createElement("div");
      const t = document.createElement("span");
      t.className = "t";
      t.textContent = String(line.time || "").replace("T", " ").replace(/\.\d+/, "").replace("Z", "") + " ";
      const s = document.createElement("span");
      s.className = "src";
      s.textContent = (line.source || "") + ": ";
      row.append(t, s, document.createTextNode(line.text || ""));
      log.append(row);
      while (log.childElementCount > KEEP) log.firstElementChild.remove();
      if (stick) log.scrollTop = log.scrollHeight;
    };
    src.addEventListener("lagged", (ev) => {
      const row = document.createElement("div");
      row.className = "t";
      row.textContent = "… " + ev.data + " lines skipped";
      log.append(row);
    });
  }
})();
