/*
 * "Copy the code" on the raters' thank-you pages: a button with data-copy="ID" copies the text of element ID to the
 * clipboard. The text is selected first in any case, so where the clipboard is refused (an old browser, a page
 * served over plain HTTP) the rater only has to use their device's own Copy.
 */
(function () {
  "use strict";

  function select(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function copySelection() {
    try {
      return document.execCommand("copy");
    } catch (err) {
      return false;
    }
  }

  function copy(button) {
    var target = document.getElementById(button.dataset.copy);
    var status = button.parentNode.querySelector(".copied");
    var text = target ? target.textContent.trim() : "";
    if (!text) return;
    select(target);
    function report(copied) {
      button.dataset.copied = copied ? "true" : "false";
      if (status) status.textContent = copied ? "Copied." : "Selected: use your device's Copy to copy it.";
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(
        function () { report(true); },
        function () { report(copySelection()); }
      );
    } else {
      report(copySelection());
    }
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-copy]");
    if (button) copy(button);
  });
})();
