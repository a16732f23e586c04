// The console works without this script; it adds copy buttons and the live usage panel.
"use strict";
document.querySelectorAll("button[data-copy]").forEach(function (button) {
  button.hidden = false;
  button.addEventListener("click", function () {
    var target = document.getElementById(button.getAttribute("data-copy"));
    var text = target.value || target.textContent;
    var done = function () {
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = "Copy"; }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { target.select(); });
    } else {
      target.select();
      document.execCommand("copy");
      done();
    }
  });
});
var panel = document.querySelector("[data-usage-url]");
if (panel) {
  setInterval(function () {
    fetch(panel.getAttribute("data-usage-url"), { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (doc) {
        if (!doc) { return; }
        document.getElementById("usage-issued").textContent = doc.issued;
        document.getElementById("usage-failed").textContent = doc.failed;
      });
  }, 5000);
}
