// quotad console: small progressive enhancements over server-rendered
// pages. Everything works without it but the live numbers.
"use strict";

(function () {
  // Times: the server writes UTC; show the viewer's zone, UTC on hover.
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) { t.textContent = d.toLocaleString(); }
    });
  }

  // Forms that change something irreversibly ask first.
  document.addEventListener("submit", function (e) {
    var msg = e.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) { e.preventDefault(); }
  });

  function fmt(n) { return Number(n).toLocaleString("en-US"); }
  function pct(v, limit) {
    if (limit <= 0) { return v > 0 ? 100 : 0; }
    return Math.min(100, Math.max(0, v / limit * 100));
  }

  function setMeter(row, m) {
    var f = function (name) { return row.querySelector('[data-f="' + name + '"]'); };
    f("used").textContent = fmt(m.used);
    f("reserved").textContent = fmt(m.reserved);
    f("limit").textContent = fmt(m.limit);
    f("remaining").textContent = fmt(m.remaining);
    var u = pct(m.used, m.limit), r = pct(m.reserved, m.limit);
    f("used-bar").setAttribute("width", u.toFixed(2));
    f("reserved-bar").setAttribute("x", u.toFixed(2));
    f("reserved-bar").setAttribute("width", Math.min(r, 100 - u).toFixed(2));
    row.querySelector("svg.bar").setAttribute("aria-label",
      row.getAttribute("data-meter") + ": " + fmt(m.used) + " used and " + fmt(m.reserved) + " reserved of " + fmt(m.limit));
    row.classList.remove("flash-update");
    void row.offsetWidth; // restart the highlight
    row.classList.add("flash-update");
  }

  function live(list) {
    var status = document.getElementById("live");
    var rows = {};
    list.querySelectorAll("li[data-meter]").forEach(function (li) { rows[li.getAttribute("data-meter")] = li; });

    function reloadView() {
      fetch(list.getAttribute("data-view"), { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (v) { if (v) { applyView(v); } });
    }
    function applyView(v) {
      var plan = document.getElementById("plan");
      if (plan && v.plan) { plan.textContent = v.plan; }
      var missing = false;
      (v.meters || []).forEach(function (m) {
        if (rows[m.meter]) { setMeter(rows[m.meter], m); } else { missing = true; }
      });
      if (missing) { window.location.reload(); } // a meter the page does not have yet
    }
    function onChange(e) {
      var c;
      try { c = JSON.parse(e.data); } catch (err) { return; }
      if (c.meter && rows[c.meter]) { setMeter(rows[c.meter], c); } else { reloadView(); }
      if (c.plan) { var p = document.getElementById("plan"); if (p) { p.textContent = c.plan; } }
      status.textContent = "live · last change " + new Date().toLocaleTimeString();
    }

    var es = new EventSource(list.getAttribute("data-events"));
    es.addEventListener("open", function () { status.textContent = "live"; });
    es.addEventListener("error", function () { status.textContent = "reconnecting…"; });
    es.addEventListener("snapshot", function (e) {
      try { applyView(JSON.parse(e.data)); } catch (err) { /* a bad snapshot: wait for the next */ }
      status.textContent = "live";
    });
    ["usage", "reservation", "reset", "threshold"].forEach(function (t) { es.addEventListener(t, onChange); });
    es.addEventListener("plan", function () { reloadView(); status.textContent = "live · plan changed"; });
    es.addEventListener("gap", reloadView);
    window.addEventListener("pagehide", function () { es.close(); });
  }

  function refreshImages() {
    document.querySelectorAll("img[data-refresh]").forEach(function (img) {
      var base = img.getAttribute("src").split("?")[0];
      setInterval(function () { img.setAttribute("src", base + "?t=" + Date.now()); },
        Number(img.getAttribute("data-refresh")));
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    var list = document.getElementById("meters");
    if (list && window.EventSource) { live(list); }
    refreshImages();
    var secret = document.querySelector("[data-select]");
    if (secret) { secret.focus(); secret.select(); }
  });
})();
