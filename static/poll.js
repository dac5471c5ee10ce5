// The one polling loop of the researcher pages (batches, campaigns, training runs).
// needlePoll(url, everyMs, render): every `everyMs` ms, fetch `url` (a string, or a function that returns one, or
// null to stop) as JSON and hand the answer to `render`; `render` returns false to stop polling. A failed fetch
// keeps the figures on the page and tries again at the next tick.
window.needlePoll = function (url, everyMs, render) {
  async function tick() {
    const target = typeof url === "function" ? url() : url;
    if (target === null) return;
    let again = true;
    try {
      const response = await fetch(target, {credentials: "same-origin"});
      again = render(await response.json()) !== false;
    } catch (e) { /* keep the last figures; try again */ }
    if (again) setTimeout(tick, everyMs);
  }
  setTimeout(tick, everyMs);
};
