/*
 * Curation review pages (annotation/templates/annotation/curation/{generalist,specialist}.html).
 *
 * The pages are plain forms that work without JavaScript. This script takes
 * them over: keys decide, the decision is posted in the background (asking
 * for JSON), and the answer carries the next candidate, whose image was
 * preloaded, so it appears at once. It also records time on task.
 *
 * A decision is sent once: while one is in flight, and for a moment after the
 * next candidate appears, input is ignored, so a double press cannot decide a
 * candidate the reviewer has not seen. The server is idempotent anyway.
 *
 * States (#curate[data-state]): ready (takes input), sending, stopped (error
 * the reviewer must act on). data-shown counts the candidates shown so far.
 */
(function () {
  "use strict";

  var root = document.getElementById("curate");
  if (!root) return;

  var INPUT_GUARD_MS = 250;
  var form = document.getElementById("curate-form");
  var image = document.getElementById("curate-image");
  var caption = document.getElementById("curate-caption");          // generalist: the caption shown
  var captionInput = document.getElementById("curate-caption-input"); // specialist: the caption to correct
  var progress = document.getElementById("curate-progress");
  var message = document.getElementById("curate-message");
  var specialist = root.dataset.stage === "specialist";
  var rating = root.dataset.mode === "rating";
  var shownAt = performance.now();
  var preloaded = [];

  function say(text, isError) {
    message.textContent = text || "";
    message.classList.toggle("error", !!isError);
  }

  function setState(state) { root.dataset.state = state; }

  function buttons() { return form.querySelectorAll("button[type=submit]"); }

  // aria-disabled, not disabled: a disabled button would drop the keyboard focus.
  function setEnabled(enabled) {
    Array.prototype.forEach.call(buttons(), function (b) { b.setAttribute("aria-disabled", enabled ? "false" : "true"); });
  }

  function preload(url) {
    if (!url) return;
    var img = new Image();
    img.src = url;
    preloaded = [img]; // held so the browser keeps it until it is shown
  }

  if (image.complete) shownAt = performance.now();
  else image.addEventListener("load", function () { shownAt = performance.now(); }, { once: true });
  preload(root.dataset.preload);

  function reasonBoxes() { return form.querySelectorAll("input[name=reasons]"); }

  function show(next, preloadUrl) {
    form.action = next.action;
    image.alt = next.alt;
    image.src = next.image;
    if (caption) caption.textContent = next.caption;
    if (captionInput) {
      // Leave the caption, so that the keys decide again for the next image.
      if (document.activeElement === captionInput) captionInput.blur();
      captionInput.value = next.caption;
      captionInput.dataset.original = next.caption;
    }
    Array.prototype.forEach.call(reasonBoxes(), function (box) { box.checked = false; });
    root.dataset.shown = String(Number(root.dataset.shown || 0) + 1);
    function ready() {
      shownAt = performance.now();
      setTimeout(function () { setState("ready"); setEnabled(true); }, INPUT_GUARD_MS);
    }
    if (image.complete) ready();
    else image.addEventListener("load", ready, { once: true });
    preload(preloadUrl);
  }

  function submit(fields) {
    if (root.dataset.state !== "ready") return;
    if (specialist && fields.keep === "1") {
      var ticked = Array.prototype.some.call(reasonBoxes(), function (box) { return box.checked; });
      if (!ticked) { say("Tick at least one reason (keys 1 to 4) to select this image, or skip it with X.", true); return; }
      if (!captionInput.value.trim()) { say("Write the caption before selecting the image.", true); captionInput.focus(); return; }
    }
    setState("sending");
    setEnabled(false);
    say("");
    var data = new FormData(form);
    Object.keys(fields).forEach(function (key) { data.set(key, fields[key]); });
    data.set("seconds", String(Math.round((performance.now() - shownAt)) / 1000));
    fetch(form.action, {
      method: "POST", body: data, credentials: "same-origin",
      headers: { Accept: "application/json", "X-CSRFToken": data.get("csrfmiddlewaretoken") }
    })
      .then(function (response) {
        return response.json().catch(function () { return null; }).then(function (body) {
          if (response.ok && body) return body;
          var text = body && body.error;
          if (!text && response.status === 403) text = "Your session has expired or you may no longer review. Please reload the page.";
          throw new Error(text || "Something went wrong on the server (" + response.status + "). Please try again.");
        });
      }, function () { throw new Error("Could not reach the server. Check your connection and try again."); })
      .then(function (body) {
        if (progress) progress.textContent = body.progress;
        if (!body.next) { window.location.reload(); return; } // the server's page says why nothing is left
        show(body.next, body.preload);
      })
      .catch(function (err) {
        // Refused (already decided by someone else, selection full...) or lost: the page from the server knows best.
        say(err.message + " ", true);
        var again = document.createElement("a");
        again.href = window.location.pathname;
        again.textContent = "Go on with the next candidate";
        message.appendChild(again);
        setState("stopped");
      });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var button = event.submitter;
    var fields = {};
    if (button && button.name) fields[button.name] = button.value;
    else if (specialist) fields.keep = "1"; // Enter in a field submits as the first button: select
    else return;
    submit(fields);
  });

  var KEEP_KEYS = { k: "1", K: "1", ArrowRight: "1", r: "0", R: "0", ArrowLeft: "0" };

  document.addEventListener("keydown", function (event) {
    if (event.repeat || event.ctrlKey || event.metaKey || event.altKey) return;
    var typing = event.target === captionInput;
    if (typing) {
      if (event.key === "Escape") { captionInput.blur(); event.preventDefault(); }
      else if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); submit({ keep: "1" }); }
      return; // every other key types into the caption
    }
    if (event.target.tagName === "TEXTAREA" || event.target.tagName === "INPUT" && event.target.type === "text") return;
    if (specialist) {
      var index = "1234".indexOf(event.key);
      if (index >= 0 && event.key.length === 1) {
        var box = reasonBoxes()[index];
        if (box) { box.checked = !box.checked; event.preventDefault(); }
      } else if (event.key === "Enter" && !(event.target.tagName === "BUTTON" || event.target.tagName === "SUMMARY")) {
        event.preventDefault();
        submit({ keep: "1" });
      } else if (event.key === "x" || event.key === "X") {
        event.preventDefault();
        submit({ keep: "0" });
      }
    } else if (rating) {
      if ("12345".indexOf(event.key) >= 0 && event.key.length === 1) { event.preventDefault(); submit({ rating: event.key }); }
    } else if (KEEP_KEYS[event.key]) {
      event.preventDefault();
      submit({ keep: KEEP_KEYS[event.key] });
    }
  });
})();
