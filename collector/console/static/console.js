// tocsin console: live updates. When the collector says an alert or an action
// arrived, the page's main part is fetched again and swapped in place. No
// framework, nothing from another origin (the Content-Security-Policy says so).
"use strict";
(function () {
  var live = document.body.getAttribute("data-live");
  if (!live || !window.EventSource || /\/confirm$/.test(location.pathname)) {
    return;
  }
  var source = new EventSource(live);
  source.addEventListener("change", function () {
    fetch(location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("main");
        var main = document.getElementById("main");
        if (fresh && main) {
          main.replaceChildren.apply(main, Array.prototype.slice.call(fresh.childNodes));
          var banner = document.getElementById("live");
          if (banner) { banner.hidden = false; }
        }
      });
  });
})();
