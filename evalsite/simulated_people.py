"""Simulated raters and reviewers that use Needle over real HTTP, exactly as a person's browser does.

A :class:`RaterBrowser` opens an invite link, reads the consent page, agrees, loads the voting page (for the CSRF
cookie) and its ``tasks.json``, then loops: both images, one vote, whose reply carries the next tasks. It judges only what it receives: the two PNGs and, when
the question shows it, the prompt. A :class:`ReviewerBrowser` signs in on the rater sign-in page and works through a
curation stage's review page. Neither reads the database or any researcher page.

The judging itself is the world's (``world.raters``); this module only moves bytes over HTTP.
"""

from __future__ import annotations

import io
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.cookiejar import CookieJar

import numpy as np
from PIL import Image

_CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
_HIDDEN_INPUT = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')


class BrowserError(RuntimeError):
    """The site answered something a person's browser could not go on from."""


@dataclass
class Response:
    status: int
    url: str
    body: bytes
    headers: dict = field(default_factory=dict)

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self):
        return json.loads(self.body)


class Browser:
    """Cookies, redirects and CSRF, the way a browser carries them; nothing else."""

    def __init__(self, base_url: str, timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.cookies = CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))
        self.timeout = timeout

    def url(self, path: str) -> str:
        return path if path.startswith("http") else self.base_url + path

    def request(self, method: str, path: str, data: bytes | None = None, headers: dict | None = None) -> Response:
        request = urllib.request.Request(self.url(path), data=data, method=method, headers=headers or {})
        request.add_header("Referer", self.url(path))
        try:
            with self.opener.open(request, timeout=self.timeout) as reply:
                return Response(reply.status, reply.geturl(), reply.read(), dict(reply.headers))
        except urllib.error.HTTPError as exc:
            return Response(exc.code, exc.geturl() or self.url(path), exc.read(), dict(exc.headers or {}))

    def get(self, path: str, **headers) -> Response:
        return self.request("GET", path, headers=headers)

    def post_form(self, path: str, fields: dict | list) -> Response:
        return self.request(
            "POST",
            path,
            urllib.parse.urlencode(fields, doseq=True).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )

    def post_json(self, path: str, payload: dict) -> Response:
        return self.request(
            "POST",
            path,
            json.dumps(payload).encode(),
            {"Content-Type": "application/json", "X-CSRFToken": self.csrf_cookie()},
        )

    def csrf_cookie(self) -> str:
        return next((c.value for c in self.cookies if c.name == "csrftoken"), "")


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@dataclass
class RatingSession:
    votes: int = 0
    refused: int = 0
    finished: bool = False
    screened_out: bool = False
    completion: dict | None = None


class RaterBrowser(Browser):
    """One simulated rater's browser. ``judge(task, left_pixels, right_pixels) -> choice``."""

    def join(self, invite_url: str, crowd_id: str) -> str:
        separator = "&" if "?" in invite_url else "?"
        page = self.get(f"{invite_url}{separator}external_id={urllib.parse.quote(crowd_id)}")
        if page.status != 200:
            raise BrowserError(f"invite link answered {page.status}: {page.text()[:200]}")
        if voting_page := re.fullmatch(r"/rate/[^/]+/", urllib.parse.urlparse(page.url).path):
            # Agreed already (a join retried after a dropped connection): the link leads straight to the votes.
            self.page_path = voting_page.group(0)
            return self.page_path
        form = page.text()
        token = _CSRF_INPUT.search(form)
        if token is None:
            raise BrowserError("the consent page has no form to agree with")
        fields = [("csrfmiddlewaretoken", token.group(1))] + [
            (k, v) for k, v in _HIDDEN_INPUT.findall(form) if k != "csrfmiddlewaretoken"
        ]
        agreed = self.post_form(urllib.parse.urlparse(page.url).path, fields)
        if agreed.status != 200 or "/rate/" not in agreed.url:
            raise BrowserError(f"agreeing to take part answered {agreed.status} at {agreed.url}")
        # Agreeing lands on the voting page, or straight on its done page when nothing is left for this rater.
        self.page_path = re.match(r"/rate/[^/]+/", urllib.parse.urlparse(agreed.url).path).group(0)
        return self.page_path

    def rate(self, judge, *, max_votes: int | None = None, pause=None) -> RatingSession:
        session = RatingSession()
        tasks_url = self.page_path.rstrip("/") + "/tasks.json"
        vote_url = self.page_path.rstrip("/") + "/vote"
        body = None  # what the page knows of the rater's tasks: tasks.json on load, then each vote's reply
        while max_votes is None or session.votes < max_votes:
            if body is None:
                reply = self.get(tasks_url, Accept="application/json")
                if reply.status != 200:
                    session.finished = True
                    session.screened_out = "screen" in reply.text().lower()
                    break
                body = reply.json()
            if body.get("done") or not body.get("tasks"):
                session.finished = True
                session.completion = body.get("completion")
                session.screened_out = bool(body.get("ended"))
                break
            task = body["tasks"][0]
            started = time.monotonic()
            left = decode_png(self.get(task["images"]["left"]).body)
            right = decode_png(self.get(task["images"]["right"]).body)
            choice = judge(task, left, right)
            if pause is not None:
                pause()
            answer = self.post_json(
                vote_url, {"task": task["id"], "choice": choice, "seconds": round(time.monotonic() - started, 3)}
            )
            body = None
            if answer.status == 200:
                session.votes += 1
                reply = answer.json()
                body = reply if "tasks" in reply else None
            elif answer.status == 429:  # told to slow down, a person waits, then answers the task again
                time.sleep(min(60.0, float(answer.headers.get("Retry-After", 1))))
            else:
                session.refused += 1
                if session.refused > 20:
                    raise BrowserError(f"votes keep being refused: {answer.status} {answer.text()[:200]}")
        return session


class ReviewerBrowser(Browser):
    """A curation reviewer: signs in, then decides candidate after candidate on the stage's review page."""

    def sign_in(self, username: str, password: str) -> None:
        form = self.get("/accounts/login/")
        token = _CSRF_INPUT.search(form.text())
        if token is None:
            raise BrowserError("the sign-in page has no form")
        reply = self.post_form(
            "/accounts/login/", {"csrfmiddlewaretoken": token.group(1), "username": username, "password": password}
        )
        if reply.status != 200 or "/accounts/login/" in reply.url:
            raise BrowserError(f"signing in as {username} failed ({reply.status})")

    def review(self, stage: str, decide, *, limit: int | None = None) -> int:
        """``decide(caption, pixels) -> dict`` of the form fields (keep, rating, reasons, caption). Returns decisions."""
        page = self.get(f"/curate/review/{stage}/")
        if page.status != 200:
            raise BrowserError(f"review page of {stage} answered {page.status}")
        html = page.text()
        token = _CSRF_INPUT.search(html)
        action = re.search(r'<form id="curate-form" method="post" action="([^"]+)"', html)
        image = re.search(r'<img id="curate-image" src="([^"]+)"', html)
        # Generalists see the caption under the picture; specialists get it in a box to correct.
        caption = re.search(r'id="curate-caption(?:-input)?"[^>]*>([^<]*)<', html)
        current = None
        if action and image and caption:
            current = {"action": action.group(1), "image": image.group(1), "caption": _unescape(caption.group(1))}
        decided = 0
        while current is not None and (limit is None or decided < limit):
            started = time.monotonic()
            pixels = decode_png(self.get(current["image"]).body)
            fields = {k: v for k, v in decide(current["caption"], pixels).items() if v is not None}
            fields["seconds"] = round(time.monotonic() - started, 3)
            fields["csrfmiddlewaretoken"] = token.group(1)
            reply = self.request(
                "POST",
                current["action"],
                urllib.parse.urlencode(fields, doseq=True).encode(),
                {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
            )
            if reply.status != 200:
                raise BrowserError(f"a decision was refused: {reply.status} {reply.text()[:200]}")
            decided += 1
            following = reply.json().get("next")
            current = following and {
                "action": following["action"],
                "image": following["image"],
                "caption": following["caption"],
            }
        return decided


def _unescape(text: str) -> str:
    import html

    return html.unescape(text).strip()
