// Dry-run page (admin/dry_run.html): follow the job's progress by polling its status JSON; reload the page
// when the job ends, so that the server renders the result. A static file: the console's CSP allows no
// inline script.
(function () {
  "use strict";
  var POLL_MS = 1000;
  var MAX_POLLS = 6 * 3600;  // bounded: six hours of polling, then the page stops asking

  function start() {
    var state = document.getElementById("job-state");
    if (!state || state.getAttribute("data-finished") === "true") { return; }
    var url = state.getAttribute("data-status-url");
    var bar = document.getElementById("job-progress");
    var text = document.getElementById("job-progress-text");
    var label = document.getElementById("job-status");
    var polls = 0;

    function show(status) {
      if (label) {
        label.textContent = status.status;
        label.className = "status status-" + status.status;
      }
      if (bar && status.total) {
        bar.max = status.total;
        bar.value = status.done;
      }
      if (text) {
        var counts = status.total ? status.done + " of " + status.total + " " : "";
        text.textContent = counts + (status.message || (status.status === "queued" ? "waiting for the worker" : ""));
      }
    }

    function poll() {
      polls += 1;
      if (polls > MAX_POLLS) { return; }
      fetch(url, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
        .then(function (response) {
          if (response.status === 401 || response.status === 403 || response.status === 404) {
            if (text) { text.textContent = "Signed out or not allowed: reload the page to sign in again."; }
            return null;  // asking again would not help
          }
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.json();
        })
        .then(function (status) {
          if (status === null) { return; }
          show(status);
          if (status.finished) {
            window.location.reload();
          } else {
            window.setTimeout(poll, POLL_MS);
          }
        })
        .catch(function () { window.setTimeout(poll, POLL_MS * 5); });
    }
    window.setTimeout(poll, POLL_MS);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
