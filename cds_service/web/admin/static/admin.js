/* The admin console's shared script (CSP: script-src 'self'; no inline scripts or handlers).
   window.crampAdmin: csrfToken(), postJSON(url, body), getJSON(url) for the other pages' scripts.
   Forms with data-confirm="question" ask before they are sent (deploy, roll back, ...). */
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  // The OperationOutcome's first diagnostics (the console's JSON errors), else the HTTP status.
  function errorMessage(status, data) {
    if (data && data.issue && data.issue.length && data.issue[0].diagnostics) {
      return data.issue[0].diagnostics;
    }
    return "The server answered " + status + ".";
  }

  function handle(response) {
    return response.text().then(function (text) {
      var data = null;
      if (text) {
        try { data = JSON.parse(text); } catch (ignored) { data = null; }
      }
      if (!response.ok) {
        var error = new Error(errorMessage(response.status, data));
        error.status = response.status;
        error.body = data;
        throw error;
      }
      return data;
    });
  }

  function request(method, url, body) {
    var options = {
      method: method,
      credentials: "same-origin",
      headers: { "Accept": "application/json", "X-Requested-With": "XMLHttpRequest" }
    };
    if (method !== "GET") {
      options.headers["Content-Type"] = "application/json";
      options.headers["X-CSRFToken"] = csrfToken();
      options.body = JSON.stringify(body === undefined ? {} : body);
    }
    return fetch(url, options).then(handle);
  }

  function postJSON(url, body) { return request("POST", url, body); }
  function getJSON(url) { return request("GET", url); }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form && form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  window.crampAdmin = { csrfToken: csrfToken, postJSON: postJSON, getJSON: getJSON };
}());
