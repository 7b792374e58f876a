// Polls the run's JSON while it sends and redraws the counts and the curve.
(function () {
  "use strict";
  var section = document.getElementById("run");
  if (!section) { return; }
  var url = section.getAttribute("data-url");
  function text(id, value) {
    var node = document.getElementById(id);
    if (node) { node.textContent = String(value); }
  }
  function draw(c) {
    var line = document.getElementById("line");
    if (!line || !c) { return; }
    var w = c.width - 2 * c.pad, h = c.height - 2 * c.pad;
    line.setAttribute("points", c.points.map(function (p) {
      return (c.pad + p[0] / c.right * w).toFixed(1) + "," +
             (c.height - c.pad - p[1] / c.top * h).toFixed(1);
    }).join(" "));
    var shades = document.getElementById("shades");
    if (shades) {
      while (shades.firstChild) { shades.removeChild(shades.firstChild); }
      c.shades.forEach(function (s) {
        var rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
        rect.setAttribute("x", s.x); rect.setAttribute("y", c.pad); rect.setAttribute("width", s.w);
        rect.setAttribute("height", h); rect.setAttribute("class", s.kind);
        shades.appendChild(rect);
      });
    }
    var rate = document.getElementById("rate");
    if (rate && c.rate_y !== null) { rate.setAttribute("y1", c.rate_y); rate.setAttribute("y2", c.rate_y); }
    text("top", c.top + "/s"); text("right", c.right + " s"); text("bucket", c.bucket_seconds);
  }
  function tick() {
    fetch(url, {credentials: "same-origin"}).then(function (r) { return r.json(); }).then(function (run) {
      var k = run.counts;
      text("status", run.status); text("targeted", k.targeted); text("sent", k.sent);
      text("failed", k.failed); text("pending", k.pending); text("excluded", run.excluded_total);
      text("holds", run.invariant_holds ? "\u2713" : "\u2717");
      text("eta", run.eta || "\u2014");
      Object.keys(k.excluded).forEach(function (r) { text("excluded-" + r, k.excluded[r]); });
      Object.keys(k.delivery || {}).forEach(function (d) { text("delivery-" + d, k.delivery[d]); });
      draw(run.curve);
      if (["scheduled", "running", "paused"].indexOf(run.status) >= 0) { setTimeout(tick, 1000); }
    });
  }
  setTimeout(tick, 1000);
})();
