/* Cango portal behaviour. Loaded with `defer`; no inline scripts anywhere, so a
   strict Content-Security-Policy (script-src 'self') works.
   - [data-copy-target="#id"] buttons copy that element's text to the clipboard.
   - form[data-confirm="message"] asks for confirmation before submitting. */
(function () {
  "use strict";

  var status = null;

  function announce(text) {
    if (!status) {
      status = document.createElement("div");
      status.className = "visually-hidden";
      status.setAttribute("role", "status");
      status.setAttribute("aria-live", "polite");
      document.body.appendChild(status);
    }
    status.textContent = "";
    window.setTimeout(function () { status.textContent = text; }, 50);
  }

  function selectText(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function copyText(element) {
    var text = element.textContent.trim();
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    // Fallback for plain-HTTP origins: copy the selection.
    return new Promise(function (resolve, reject) {
      selectText(element);
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      if (ok) { resolve(); } else { reject(new Error("copy failed")); }
    });
  }

  function flashLabel(button, text) {
    if (!button.hasAttribute("data-label")) {
      button.setAttribute("data-label", button.textContent);
    }
    button.textContent = text;
    window.clearTimeout(button._copyTimer);
    button._copyTimer = window.setTimeout(function () {
      button.textContent = button.getAttribute("data-label");
    }, 2000);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy-target]");
    if (!button) { return; }
    event.preventDefault();
    var target = document.querySelector(button.getAttribute("data-copy-target"));
    if (!target) { return; }
    copyText(target).then(function () {
      flashLabel(button, "Copied");
      announce("Copied to the clipboard.");
    }, function () {
      selectText(target);
      flashLabel(button, "Press Ctrl+C");
      announce("Copying failed; the text is selected, press Control C to copy it.");
    });
  });

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var message = form.getAttribute && form.getAttribute("data-confirm");
    if (message && !window.confirm(message)) {
      event.preventDefault();
    }
  });

  // Copy buttons are hidden in the markup and shown only when this script runs.
  function revealCopyButtons() {
    var buttons = document.querySelectorAll("[data-copy-target][hidden]");
    for (var i = 0; i < buttons.length; i++) { buttons[i].hidden = false; }
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", revealCopyButtons);
  } else {
    revealCopyButtons();
  }
})();
