// Cairn's own script, for both web UIs: the light/dark theme button, and a confirmation before
// forms marked data-confirm. Loaded in <head> so a chosen theme applies before the first paint.
// Pages work without it (the system's colour scheme applies; forms post as they are).
(function () {
  "use strict";
  var KEY = "cairn-theme";
  var ORDER = ["auto", "light", "dark"];
  var root = document.documentElement;

  function stored() {
    try { return localStorage.getItem(KEY) || "auto"; } catch (e) { return "auto"; }
  }

  function apply(theme) {
    if (theme === "light" || theme === "dark") { root.setAttribute("data-theme", theme); }
    else { root.removeAttribute("data-theme"); }
    var button = document.querySelector("[data-theme-toggle]");
    if (button) {
      button.textContent = "Theme: " + theme;
      button.setAttribute("aria-label", "Colour theme: " + theme + " (press to change)");
    }
  }

  apply(stored());

  document.addEventListener("DOMContentLoaded", function () {
    apply(stored());
    var button = document.querySelector("[data-theme-toggle]");
    if (button) {
      button.addEventListener("click", function () {
        var next = ORDER[(ORDER.indexOf(stored()) + 1) % ORDER.length];
        try { localStorage.setItem(KEY, next); } catch (e) { /* private mode: this page only */ }
        apply(next);
      });
    }
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
      });
    });
  });
})();
