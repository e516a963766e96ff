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

  /* Usage chart on the dashboard: a stacked bar of cost per UTC day, one colour per
     model, drawn as SVG from the page's JSON data islands (#usage-data: a row per
     day; #usage-models: a row per model). It is intentionally tiny and hand-written:
     one chart type, no animation, no dependency. A charting library would outweigh
     the rest of the portal's script and need a build step or an external asset,
     which the offline, strict-CSP portal avoids. The tables stay the accessible
     fallback. A day row may carry "by_model" ({slug: cost in micros}); without it a
     day is one segment, named after the model when only one model was used. */
  var SVG_NS = "http://www.w3.org/2000/svg";
  var MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

  function svgEl(name, attrs, parent, text) {
    var el = document.createElementNS(SVG_NS, name);
    for (var key in attrs) { el.setAttribute(key, attrs[key]); }
    if (text !== undefined) { el.textContent = text; }
    parent.appendChild(el);
    return el;
  }
  function readJSON(id) {
    var node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }
  function dollars(text) { return parseFloat(String(text).replace(/[^0-9.\-]/g, "")) || 0; }
  function usd(value) { return "$" + (value === 0 || value >= 0.01 ? value.toFixed(2) : value.toPrecision(2)); }
  function niceMax(value) {
    var power = Math.pow(10, Math.floor(Math.log10(value)));
    var f = value / power;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * power;
  }

  function drawUsageChart(figure) {
    var rows = readJSON("usage-data"), models = readJSON("usage-models");
    if (!rows || !rows.length || !models || !models.length) { return; }
    var split = rows.some(function (row) { return row.by_model; });
    var names = split ? models.map(function (m) { return m.group; })
      : [models.length === 1 ? models[0].group : "All models"];
    var byDay = {};
    rows.forEach(function (row) {
      byDay[row.group] = split
        ? names.map(function (name) { return (row.by_model[name] || 0) / 1e6; })
        : [dollars(row.cost)];
    });
    var count = parseInt(figure.getAttribute("data-days"), 10) || 30;
    var start = Date.parse(figure.getAttribute("data-start") + "T00:00:00Z");
    var days = [], top = 0;
    for (var i = 0; i < count; i++) {
      var day = new Date(start + i * 86400000), iso = day.toISOString().slice(0, 10);
      var values = byDay[iso] || [];
      top = Math.max(top, values.reduce(function (a, b) { return a + b; }, 0));
      days.push({ label: day.getUTCDate() + " " + MONTHS[day.getUTCMonth()], values: values });
    }
    top = top > 0 ? niceMax(top) : 1;
    figure.hidden = false;  // measured in CSS pixels, so text keeps the page's size
    var W = Math.max(300, figure.clientWidth || 720), H = 240, left = 84, right = 8;
    var upper = 12, lower = 44, every = W < 560 ? 10 : 5;
    var plotW = W - left - right, plotH = H - upper - lower, slot = plotW / count;
    var calls = models.reduce(function (a, m) { return a + m.calls; }, 0);
    var svg = svgEl("svg", {
      viewBox: "0 0 " + W + " " + H, role: "img", "class": "usage-chart-svg",
      "aria-label": "Stacked bar chart of cost per day over the last " + count + " days: " +
        calls + " call" + (calls === 1 ? "" : "s") + "; " +
        models.map(function (m) { return m.group + " " + m.cost; }).join(", ") + "."
    }, figure);
    [0, 0.5, 1].forEach(function (share) {
      var y = upper + plotH * (1 - share);
      svgEl("line", { x1: left, x2: W - right, y1: y, y2: y, "class": "chart-grid" }, svg);
      svgEl("text", { x: left - 6, y: y + 4, "text-anchor": "end", "class": "chart-tick" }, svg, usd(top * share));
    });
    days.forEach(function (day, index) {
      var x = left + index * slot, base = upper + plotH;
      day.values.forEach(function (value, series) {
        if (value <= 0) { return; }
        var h = Math.max(1, value / top * plotH);
        var bar = svgEl("rect", { x: x + slot * 0.15, y: base - h, width: slot * 0.7, height: h,
          "class": "chart-bar chart-s" + (series % 8) }, svg);
        svgEl("title", {}, bar, names[series] + ", " + day.label + ": " + usd(value));
        base -= h;
      });
      if (index % every === 0 || index === count - 1) {
        var last = index === count - 1;  // right-aligned so it stays inside the chart
        svgEl("text", { x: last ? x + slot : x + slot / 2, y: upper + plotH + 16,
          "text-anchor": last ? "end" : "middle", "class": "chart-tick" }, svg, day.label);
      }
    });
    svgEl("text", { x: left + plotW / 2, y: H - 6, "text-anchor": "middle", "class": "chart-axis" }, svg, "Day (UTC)");
    svgEl("text", { x: 14, y: upper + plotH / 2, "text-anchor": "middle", "class": "chart-axis",
      transform: "rotate(-90 14 " + (upper + plotH / 2) + ")" }, svg, "Cost (USD)");
    var legend = document.createElement("ul");
    legend.className = "chart-legend";
    names.forEach(function (name, series) {
      var item = document.createElement("li"), swatch = document.createElement("span");
      swatch.className = "chart-swatch chart-s" + (series % 8);
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(name));
      legend.appendChild(item);
    });
    figure.appendChild(legend);
  }

  function drawCharts() {
    var figures = document.querySelectorAll("[data-usage-chart]");
    for (var i = 0; i < figures.length; i++) { drawUsageChart(figures[i]); }
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", drawCharts);
  } else {
    drawCharts();
  }
})();
