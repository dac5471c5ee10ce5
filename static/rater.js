/*
 * The rater's voting page (annotation/templates/annotation/rater/vote.html).
 *
 * The server leases a rater up to two tasks at a time (tasks.json): the one
 * on screen and the next, whose images are preloaded so that the switch after
 * an answer is instant. On an answer the page shows the next task at once and
 * sends the vote in the background; the vote's reply carries the next lease
 * (one request per answer), and tasks.json is asked only when it does not.
 * Sending a vote twice is harmless (the server answers "duplicate"), so a vote
 * lost to the network is simply sent again.
 *
 * States (on #rater[data-state]): loading (waiting for a task or its images),
 * ready (a task is on screen and takes answers), stopped (an error the rater
 * must act on), done. data-shown counts the tasks shown so far; data-visible
 * says whether the pair on screen is one still to be answered.
 */
(function () {
  "use strict";

  var root = document.getElementById("rater");
  if (!root) return;

  // A task that appears instantly after an answer takes no input for this
  // long, so a double click or a key pressed twice cannot answer a pair the
  // rater has not looked at.
  var INPUT_GUARD_MS = 250;
  var VOTE_ATTEMPTS = 3;
  var KEY_NAMES = { ArrowLeft: "\u2190", ArrowRight: "\u2192" };

  function byId(id) { return document.getElementById(id); }
  var el = {
    progress: byId("rater-progress"),
    question: byId("rater-question"),
    prompt: byId("rater-prompt"),
    promptText: byId("rater-prompt-text"),
    pair: byId("rater-pair"),
    left: byId("rater-left"),
    right: byId("rater-right"),
    choices: byId("rater-choices"),
    message: byId("rater-message"),
    retry: byId("rater-retry"),
    help: byId("rater-help"),
    instructions: byId("rater-instructions"),
    done: byId("rater-done"),
    code: byId("rater-code"),
    redirect: byId("rater-redirect")
  };

  var queue = [];       // fetched tasks, images preloading or loaded, not yet on screen
  var current = null;   // the task on screen (or whose images are still loading)
  var shownAt = 0;      // performance.now() when the current task became visible
  var answered = {};    // task ids whose vote was sent: never shown again unless the vote is refused
  var votesInFlight = 0;
  var refilling = false;
  var refillAgain = false;
  var finished = false;
  var guardTimer = null;
  var choiceSignature = "";

  // --- Small helpers -------------------------------------------------------------------------

  function setState(state) { root.dataset.state = state; }

  function say(text, isError) {
    el.message.textContent = text || "";
    el.message.classList.toggle("error", !!isError);
  }

  function showProgress(progress) {
    if (!progress || !el.progress) return;
    el.progress.textContent = progress.total ? progress.done + " of " + progress.total : progress.done + " done";
  }

  function csrfToken() {
    var match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  // Resolves to the JSON body of a 2xx answer; rejects with the server's own
  // message otherwise (err.status tells what kind of refusal it was).
  function readJson(response) {
    var isJson = (response.headers.get("Content-Type") || "").indexOf("application/json") === 0;
    var body = isJson ? response.json() : Promise.resolve(null);
    return body.then(function (data) {
      if (response.ok && data) return data;
      var message = data && data.error;
      if (!message && response.status === 403) message = "Your session has expired. Please reload the page.";
      var err = new Error(message || "Something went wrong on the server (" + response.status + "). Please try again.");
      err.status = response.status;
      err.ended = data && data.ended;
      throw err;
    });
  }

  function networkError() {
    var err = new Error("Could not reach the server. Check your connection and try again.");
    err.status = 0;
    return err;
  }

  // --- Tasks: fetch, preload, show -----------------------------------------------------------

  function preload(task) {
    function load(url, alt) {
      return new Promise(function (resolve, reject) {
        var img = new Image();
        img.alt = alt;
        img.onload = function () { resolve(img); };
        img.onerror = function () { reject(new Error("An image could not be loaded. Please reload the page.")); };
        img.src = url;
      });
    }
    task.ready = Promise.all([load(task.images.left, "left image"), load(task.images.right, "right image")]);
    task.ready.catch(function () {}); // reported when the task is due on screen
    return task;
  }

  function refill() {
    if (finished) return;
    if (refilling) { refillAgain = true; return; }
    refilling = true;
    fetch(root.dataset.tasksUrl, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
      .catch(function () { throw networkError(); })
      .then(readJson)
      .then(absorb)
      .catch(function (err) {
        // Paused or closed study, lost connection: say so and let the rater try again.
        say(err.message, true);
        if (!current) {
          setState("stopped");
          el.retry.hidden = false;
        }
      })
      .then(function () {
        refilling = false;
        if (refillAgain) { refillAgain = false; refill(); }
      });
  }

  // The rater's open tasks as the server lists them (tasks.json, or a vote's reply): queue the new ones.
  function absorb(data) {
    if (data.ended) return leave(data.ended);
    showProgress(data.progress);
    var open = {};
    data.tasks.forEach(function (task) { open[task.id] = true; });
    // A queued task the server no longer lists expired: drop it.
    queue = queue.filter(function (task) { return open[task.id]; });
    data.tasks.forEach(function (task) {
      var known = answered[task.id] || (current && current.id === task.id) ||
        queue.some(function (queued) { return queued.id === task.id; });
      if (!known) queue.push(preload(task));
    });
    if (data.done) {
      if (!current && !queue.length && !votesInFlight) finish(data.completion);
      return;
    }
    el.retry.hidden = true;
    if (!current) showNext();
  }

  function showNext() {
    if (current || finished) return;
    var task = queue.shift();
    if (!task) {
      setState("loading");
      return;
    }
    current = task;
    setState("loading");
    task.ready.then(
      function (images) { if (current === task) display(task, images); },
      function (err) {
        if (current !== task) return;
        current = null;
        say(err.message, true);
        setState("stopped");
        el.retry.hidden = false;
      }
    );
  }

  function display(task, images) {
    el.left.replaceChildren(images[0]);
    el.right.replaceChildren(images[1]);
    el.question.textContent = task.question;
    if (task.prompt) {
      el.promptText.textContent = task.prompt;
      el.prompt.hidden = false;
    } else {
      el.prompt.hidden = true;
      el.promptText.textContent = "";
    }
    el.instructions.textContent = task.instructions || "";
    renderChoices(task.choices);
    // A new pair starts at the top of the page: a rater who scrolled (to open "How to judge" on a phone, say)
    // must still see the question and both images.
    if (window.scrollX || window.scrollY) window.scrollTo(0, 0);
    root.dataset.visible = "true";
    root.dataset.shown = String(Number(root.dataset.shown || 0) + 1);
    shownAt = performance.now(); // time on task runs from the moment both images are on screen
    clearTimeout(guardTimer);
    guardTimer = setTimeout(function () {
      if (current === task) {
        setState("ready");
        setButtonsEnabled(true);
      }
    }, INPUT_GUARD_MS);
  }

  // Buttons are rebuilt only when the set of choices changes, so a keyboard
  // user's focus stays on the button they were on from one pair to the next.
  var STACKED_LABELS = { left: "Top", right: "Bottom" };

  function renderChoices(choices) {
    var signature = choices.map(function (c) { return c.value; }).join(",");
    if (signature === choiceSignature) return;
    choiceSignature = signature;
    el.choices.replaceChildren();
    choices.forEach(function (choice) {
      var button = document.createElement("button");
      button.type = "button";
      button.className = "choice choice-" + choice.value;
      button.dataset.choice = choice.value;
      button.setAttribute("aria-keyshortcuts", choice.keys.join(" "));
      var label = document.createElement("span");
      label.className = "label";
      label.textContent = choice.label;
      // Stacked on a phone, "left" is the top image: say so where the layout does.
      var stacked = STACKED_LABELS[choice.value];
      if (stacked) {
        label.classList.add("wide-only");
        var narrow = document.createElement("span");
        narrow.className = "label narrow-only";
        narrow.textContent = stacked;
        button.appendChild(narrow);
      }
      var hints = document.createElement("span");
      hints.className = "hints";
      choice.keys.forEach(function (key) {
        var kbd = document.createElement("kbd");
        kbd.textContent = KEY_NAMES[key] || key.toUpperCase();
        hints.appendChild(kbd);
      });
      button.prepend(label);
      button.appendChild(hints);
      el.choices.appendChild(button);
    });
    setButtonsEnabled(false);
  }

  // aria-disabled rather than disabled: a disabled button drops the keyboard
  // focus, and the buttons are off only for a moment between pairs.
  function setButtonsEnabled(enabled) {
    Array.prototype.forEach.call(el.choices.querySelectorAll("button"), function (button) {
      button.setAttribute("aria-disabled", enabled ? "false" : "true");
    });
  }

  // --- Answers -------------------------------------------------------------------------------

  function choose(value) {
    var task = current;
    if (!task || root.dataset.state !== "ready") return;
    if (!task.choices.some(function (c) { return c.value === value; })) return;
    var seconds = (performance.now() - shownAt) / 1000;
    // Off at once: whatever arrives before the next task is ready is ignored.
    setState("loading");
    setButtonsEnabled(false);
    root.dataset.visible = "false"; // dims the answered pair, unless the next one replaces it at once
    current = null;
    answered[task.id] = true;
    showNext();
    sendVote(task, value, seconds, 1);
  }

  function sendVote(task, value, seconds, attempt) {
    if (attempt === 1) votesInFlight += 1;
    fetch(root.dataset.voteUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrfToken() },
      body: JSON.stringify({ task: task.id, choice: value, seconds: Math.round(seconds * 1000) / 1000 })
    })
      .catch(function () { throw networkError(); })
      .then(readJson)
      .then(
        function (data) {
          if (data.ended) { leave(data.ended); return {}; }
          if (el.message.classList.contains("error")) say("");
          if (!data.tasks) showProgress(data.progress);
          return { reply: data.tasks ? data : null };
        },
        function (err) {
          if (err.ended) { leave(err.ended); return {}; }
          // Lost on the way, or the server failed: sending again is safe, a
          // recorded vote comes back as a duplicate.
          if ((err.status === 0 || err.status >= 500) && attempt < VOTE_ATTEMPTS) {
            setTimeout(function () { sendVote(task, value, seconds, attempt + 1); }, 1000 * attempt);
            return null;
          }
          // Refused (expired, paused, too fast...): say why. If the task is
          // still open the server hands it out again.
          delete answered[task.id];
          say(err.message, true);
          return {};
        }
      )
      .then(function (outcome) {
        if (!outcome) return; // sent again
        votesInFlight -= 1;
        // The reply listed the next tasks already; otherwise (refused, or no lease in it) ask for them.
        if (outcome.reply && !finished) absorb(outcome.reply); else refill();
      });
  }

  // The study ended for this rater (quality control excluded them): their ending page says so and why.
  function leave(url) {
    finished = true;
    setState("done");
    window.location.assign(url);
  }

  function finish(completion) {
    finished = true;
    setState("done");
    el.pair.hidden = true;
    el.choices.hidden = true;
    el.help.hidden = true;
    el.prompt.hidden = true;
    el.question.hidden = true;
    el.retry.hidden = true;
    el.code.textContent = completion ? completion.code : "";
    el.done.hidden = false;
    if (completion && completion.url) {
      el.redirect.hidden = false;
      window.location.assign(completion.url);
    }
  }

  // --- Input ---------------------------------------------------------------------------------

  function keyMatches(key, pressed) {
    return key.length === 1 ? key.toLowerCase() === pressed.toLowerCase() : key === pressed;
  }

  document.addEventListener("keydown", function (event) {
    // Held keys repeat; modified keys are the browser's (Alt+Left is Back).
    if (event.repeat || event.ctrlKey || event.metaKey || event.altKey) return;
    if (!current) return;
    var choice = current.choices.find(function (c) {
      return c.keys.some(function (key) { return keyMatches(key, event.key); });
    });
    if (!choice) return;
    event.preventDefault();
    choose(choice.value);
  });

  el.choices.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-choice]");
    if (button) choose(button.dataset.choice);
  });

  el.retry.addEventListener("click", function () {
    el.retry.hidden = true;
    say("");
    if (current === null && queue.length === 0) {
      refill();
    } else {
      window.location.reload();
    }
  });

  refill();
})();
