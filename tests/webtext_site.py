"""A fixture web site served on 127.0.0.1 for the WebText tests: pages written by the test, nothing external."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SUBJECTS = [
    "the old harbour master",
    "a young engineer",
    "the city council",
    "my grandmother",
    "the local baker",
    "a team of students",
    "the night watchman",
    "our new neighbour",
    "the school choir",
    "a travelling musician",
    "the village doctor",
    "the river ferry crew",
]
VERBS = [
    "repaired",
    "painted",
    "described",
    "visited",
    "photographed",
    "measured",
    "rebuilt",
    "remembered",
    "cleaned",
    "explained",
    "celebrated",
    "carried",
]
OBJECTS = [
    "the wooden bridge near the station",
    "a quiet garden behind the library",
    "the long road to the northern market",
    "an ancient clock in the town square",
    "the narrow stairs of the lighthouse",
    "a small boat with a red sail",
    "the public baths by the canal",
    "an empty warehouse on the hill",
    "the stone wall around the orchard",
    "a collection of letters from the war",
    "the broken windows of the chapel",
    "a map of the forgotten railway",
]
CLAUSES = [
    "because it had been neglected for years",
    "while the rain kept falling on the roofs",
    "and everyone agreed that it was worth the effort",
    "although nobody had asked them to do it",
    "before the winter storms arrived",
    "with help from the people who lived nearby",
]
GERMAN = (
    "Der alte Hafenmeister erzählte uns gestern eine lange Geschichte über die Brücke am Bahnhof. "
    "Die Kinder hörten aufmerksam zu, während draußen der Regen auf die Dächer fiel. "
    "Niemand wusste genau, wann die Brücke gebaut worden war, aber alle waren sich einig, dass sie schön ist. "
    "Im Winter kommen nur wenige Besucher in das kleine Dorf an der Küste. "
    "Die Bäckerei öffnet trotzdem jeden Morgen um sechs Uhr und verkauft frisches Brot. "
    "Am Abend treffen sich die Nachbarn im Gasthaus und sprechen über das Wetter und die Ernte. "
)


def article_text(seed: int, sentences: int = 14) -> str:
    """Several paragraphs of plain English sentences, different for each seed."""
    rng = random.Random(seed)
    body = []
    for _ in range(sentences):
        sentence = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(CLAUSES)}."
        body.append(sentence[0].upper() + sentence[1:])
    return "\n\n".join(" ".join(body[i : i + 3]) for i in range(0, len(body), 3))


def page(title: str, text: str, chrome: str = "") -> str:
    paragraphs = "".join(f"<p>{p}</p>\n" for p in text.split("\n\n"))
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title></head><body>"
        f"<nav><a href='/'>Home</a> <a href='/about'>About</a> {chrome}</nav>"
        f"<article><h1>{title}</h1>\n{paragraphs}</article>"
        "<footer>Copyright 2017. Read our cookie policy.</footer></body></html>"
    )


def near_copy(text: str) -> str:
    """The same article with two words changed: a near duplicate."""
    return text.replace("harbour", "harbor", 1).replace("quiet", "silent", 1).replace("painted", "coloured", 1)


class Site:
    """Routes -> (status, headers, body); records every request with its time."""

    def __init__(self):
        self.routes: dict[str, tuple[int, dict, bytes]] = {}
        self.requests: Counter[str] = Counter()
        self.times: list[tuple[str, float, str]] = []
        self.flaky_failures = 1
        self.slow_seconds = 3.0
        self.server: ThreadingHTTPServer | None = None

    def add_html(self, path: str, html: str, content_type: str = "text/html; charset=utf-8") -> None:
        self.routes[path] = (200, {"Content-Type": content_type}, html.encode())

    def add(self, path: str, status: int, headers: dict, body: bytes = b"") -> None:
        self.routes[path] = (status, headers, body)

    @property
    def base(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> Site:
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                path = self.path
                site.requests[path] += 1
                site.times.append((path, time.monotonic(), self.headers.get("User-Agent", "")))
                if path == "/slow":
                    time.sleep(site.slow_seconds)
                if path == "/flaky" and site.requests[path] <= site.flaky_failures:
                    self.send_response(503)
                    self.end_headers()
                    return
                status, headers, body = site.routes.get(path, (404, {"Content-Type": "text/plain"}, b"not found"))
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def standard_site() -> tuple[Site, dict[str, str]]:
    """The fixture site of the issue: valid articles plus one page for each way a page can fail.

    Returns the site (not started) and the texts of the valid pages by path.
    """
    site = Site()
    valid: dict[str, str] = {}
    site.add("/robots.txt", 200, {"Content-Type": "text/plain"}, b"User-agent: *\nDisallow: /private/\n")
    for i in range(1, 7):
        valid[f"/article/{i}"] = article_text(i)
        site.add_html(f"/article/{i}", page(f"Article {i}", valid[f"/article/{i}"]))
    valid["/moved-here"] = article_text(100)
    site.add_html("/moved-here", page("Moved", valid["/moved-here"]))
    site.add("/old-address", 301, {"Location": "/moved-here"})
    valid["/flaky"] = article_text(101)
    site.add_html("/flaky", page("Flaky", valid["/flaky"]))
    site.add_html("/private/secret", page("Secret", article_text(102)))
    site.add_html("/slow", page("Slow", article_text(103)))
    site.add("/data.json", 200, {"Content-Type": "application/json"}, b'{"not": "html"}')
    site.add("/to-wikipedia", 302, {"Location": "https://en.wikipedia.org/wiki/Lighthouse"})
    site.add_html("/german", page("Nachrichten", GERMAN * 2))
    site.add_html("/huge", page("Huge", article_text(104, sentences=3000)))
    site.add_html("/tiny", page("Tiny", "A very short note about nothing at all."))
    # exact duplicates: the same article under two addresses with different page chrome
    valid["/dup/a"] = article_text(200)
    site.add_html("/dup/a", page("Dup", valid["/dup/a"], chrome="<a href='/x'>X</a>"))
    site.add_html("/dup/b", page("Dup", valid["/dup/a"], chrome="<a href='/y'>Y</a>"))
    # near duplicates: two words differ
    valid["/near/a"] = article_text(300, sentences=30)
    site.add_html("/near/a", page("Near", valid["/near/a"]))
    site.add_html("/near/b", page("Near", near_copy(valid["/near/a"])))
    return site, valid
