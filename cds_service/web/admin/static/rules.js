/* The draft editor (rules_draft.html): line numbers beside the YAML, live validation while typing (debounced,
   POST /admin/rules/validate with the X-CSRFToken header through window.crampAdmin), problem lines marked,
   and "line N" buttons that move the caret to the line. CSP: a file, no inline script. Tab is left to the
   browser so the keyboard can leave the textarea. */
(function () {
  "use strict";

  var DELAY_MS = 600;

  function lineStart(text, line) {
    var index = 0;
    for (var n = 1; n < line; n += 1) {
      var next = text.indexOf("\n", index);
      if (next < 0) { return text.length; }
      index = next + 1;
    }
    return index;
  }

  function goToLine(textarea, line) {
    var text = textarea.value;
    var start = lineStart(text, line);
    var end = text.indexOf("\n", start);
    textarea.focus();
    textarea.setSelectionRange(start, end < 0 ? text.length : end);
    var style = window.getComputedStyle(textarea);
    var height = parseFloat(style.lineHeight) || 16;
    textarea.scrollTop = Math.max(0, (line - 5) * height);
  }

  function renderNumbers(gutter, textarea, problemLines) {
    var count = textarea.value.split("\n").length;
    var marked = {};
    problemLines.forEach(function (line) { marked[line] = true; });
    var fragment = document.createDocumentFragment();
    for (var line = 1; line <= count; line += 1) {
      var span = document.createElement("span");
      span.textContent = String(line);
      if (marked[line]) { span.className = "problem-line"; }
      fragment.appendChild(span);
      fragment.appendChild(document.createTextNode("\n"));
    }
    gutter.textContent = "";
    gutter.appendChild(fragment);
    gutter.scrollTop = textarea.scrollTop;
  }

  function renderProblems(list, status, textarea, problems) {
    list.textContent = "";
    if (!problems.length) {
      status.textContent = "No problems: the validator accepts this rule set.";
      status.className = "live-status status-ok";
      textarea.removeAttribute("aria-invalid");
      return;
    }
    status.textContent = problems.length + (problems.length === 1 ? " problem" : " problems") + " found.";
    status.className = "live-status status-problems";
    textarea.setAttribute("aria-invalid", "true");
    problems.forEach(function (problem) {
      var item = document.createElement("li");
      if (problem.line) {
        var button = document.createElement("button");
        button.type = "button";
        button.className = "button-quiet";
        button.textContent = "line " + problem.line;
        button.setAttribute("aria-label", "Go to line " + problem.line);
        button.addEventListener("click", function () { goToLine(textarea, problem.line); });
        item.appendChild(button);
        item.appendChild(document.createTextNode(": "));
      }
      var field = document.createElement("code");
      field.textContent = problem.field;
      item.appendChild(field);
      item.appendChild(document.createTextNode(": " + problem.message));
      list.appendChild(item);
    });
  }

  function start() {
    var textarea = document.getElementById("rules-yaml");
    if (!textarea) { return; }
    var gutter = document.getElementById("rules-yaml-lines");
    var list = document.getElementById("rules-yaml-problems");
    var status = document.getElementById("rules-yaml-status");
    var url = textarea.getAttribute("data-validate-url");
    var problemLines = (textarea.getAttribute("data-problem-lines") || "").split(",")
      .filter(Boolean).map(Number);
    var timer = null;
    var sent = 0;

    function validate() {
      var ticket = ++sent;
      status.textContent = "Checking…";
      status.className = "live-status";
      window.crampAdmin.postJSON(url, { content: textarea.value }).then(function (data) {
        if (ticket !== sent) { return; }  // a newer check is under way
        var problems = (data && data.problems) || [];
        problemLines = problems.map(function (p) { return p.line; }).filter(Boolean);
        renderProblems(list, status, textarea, problems);
        renderNumbers(gutter, textarea, problemLines);
      }).catch(function (error) {
        if (ticket !== sent) { return; }
        status.textContent = "Could not check: " + error.message;
        status.className = "live-status status-problems";
      });
    }

    textarea.addEventListener("input", function () {
      renderNumbers(gutter, textarea, problemLines);
      window.clearTimeout(timer);
      timer = window.setTimeout(validate, DELAY_MS);
    });
    textarea.addEventListener("scroll", function () { gutter.scrollTop = textarea.scrollTop; });
    document.querySelectorAll("a.goto-line").forEach(function (link) {
      link.addEventListener("click", function (event) {
        event.preventDefault();
        goToLine(textarea, Number(link.getAttribute("data-line")));
      });
    });
    renderNumbers(gutter, textarea, problemLines);
    var summary = document.getElementById("draft-errors");
    if (summary) { summary.focus(); }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
}());
