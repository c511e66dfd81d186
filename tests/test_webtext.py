"""WebText pipeline tests: a fixture site on 127.0.0.1, a Reddit dump, a WARC built with warcio, saved HTML."""

import asyncio
import io
import json
import time
from pathlib import Path

import pytest
import zstandard

from gpt2kit.cli import main
from gpt2kit.config import apply_overrides, apply_values, read_config_file
from gpt2kit.errors import GPT2KitError
from gpt2kit.webtext import WebTextConfig, build_webtext
from gpt2kit.webtext.fetch import FetchCache, Fetcher, Outcome
from gpt2kit.webtext.urls import normalise_url, url_domain, url_key
from tests.webtext_site import GERMAN, article_text, near_copy, page, standard_site


@pytest.fixture
def site():
    site, valid = standard_site()
    site.start()
    yield site, valid
    site.stop()


def fast_config(kind: str, inputs: list, out: Path, workers: int = 1) -> WebTextConfig:
    config = WebTextConfig(input_kind=kind, inputs=[str(i) for i in inputs], out=str(out), workers=workers)
    config.fetch.per_domain_delay = 0.01
    config.fetch.timeout = 0.5
    config.fetch.retries = 1
    config.fetch.backoff = 0.05
    config.fetch.max_bytes = 200_000
    config.filters.domain_blocklist = ["blocked.example.com"]
    return config


def read_shards(out: Path) -> list[dict]:
    records = []
    for shard in sorted(out.glob("webtext-*.jsonl.zst")):
        with zstandard.ZstdDecompressor().stream_reader(open(shard, "rb")) as reader:
            records.extend(json.loads(line) for line in io.TextIOWrapper(reader, encoding="utf-8"))
    return records


def stage_table(out: Path) -> dict[str, tuple[int, int, dict]]:
    stats = json.loads((out / "stats.json").read_text())
    return {s["stage"]: (s["in"], s["out"], s["removed"]) for s in stats["stages"]}


def url_list(base: str) -> list[str]:
    return [
        *(f"{base}/article/{i}" for i in range(1, 7)),
        f"{base}/article/1/?utm_source=reddit#comments",  # the same page as /article/1
        f"{base}/old-address",  # 301 -> /moved-here
        f"{base}/flaky",  # 503 once, then fine (retry with backoff)
        f"{base}/private/secret",  # robots.txt disallows it
        f"{base}/slow",  # answers after the timeout
        f"{base}/data.json",  # not HTML
        f"{base}/to-wikipedia",  # redirects to a Wikipedia page
        f"{base}/german",  # not English
        f"{base}/huge",  # over the size cap
        f"{base}/tiny",  # too short
        f"{base}/missing",  # 404
        f"{base}/dup/a",
        f"{base}/dup/b",  # the same article as /dup/a
        f"{base}/near/a",
        f"{base}/near/b",  # /near/a with two words changed
        "https://en.wikipedia.org/wiki/Lighthouse",
        "https://www.wikiwand.com/en/Lighthouse",
        "ftp://files.example.com/a.txt",
        "https://blocked.example.com/page",
    ]


EXPECTED_FIXTURE_STAGES = {
    "read": (25, 25, {}),
    "url normalisation": (25, 24, {"bad_url": 1}),
    "domain rules": (24, 21, {"blocklist": 1, "wikipedia": 2}),
    "url dedup": (21, 20, {"duplicate_url": 1}),
    "fetch": (
        20,
        14,
        {
            "http_404": 1,
            "not_html": 1,
            "redirect_to_blocked_domain": 1,
            "robots_disallowed": 1,
            "timeout": 1,
            "too_large": 1,
        },
    ),
    "extract (trafilatura)": (14, 14, {}),
    "English (py3langid)": (14, 13, {"not_english": 1}),
    "boilerplate lines (C4 rules)": (13, 12, {"too_few_sentences": 1}),
    "quality (Gopher rules)": (12, 12, {}),
    "minimum length": (12, 12, {}),
    "exact dedup": (12, 11, {"duplicate": 1}),
    "near dedup (MinHash)": (11, 10, {"near_duplicate": 1}),
    "written": (10, 10, {}),
}


def test_fixture_site_end_to_end(tmp_path, site):
    site, valid = site
    urls = tmp_path / "urls.txt"
    urls.write_text("# links\n\n" + "\n".join(url_list(site.base)) + "\n")
    out = tmp_path / "out"
    report = build_webtext(fast_config("urls", [urls], out))

    assert stage_table(out) == EXPECTED_FIXTURE_STAGES
    records = read_shards(out)
    assert report.documents == len(records) == 10
    by_path = {record["url"].removeprefix(site.base): record for record in records}
    # nothing valid is lost: every article, the redirect target, the retried page, one of each duplicate pair
    pairs = {"/dup/a", "/dup/b", "/near/a", "/near/b"}
    singles = {f"/article/{i}" for i in range(1, 7)} | {"/old-address", "/flaky"}  # a redirect keeps its link
    assert set(by_path) - pairs == singles
    assert len(set(by_path) & {"/dup/a", "/dup/b"}) == 1 and len(set(by_path) & {"/near/a", "/near/b"}) == 1
    assert by_path["/old-address"]["text"].startswith(valid["/moved-here"][:60])
    for path, text in valid.items():
        if path in by_path:
            first_sentence = text.split(".")[0]
            assert first_sentence in by_path[path]["text"]
    for record in records:
        assert set(record) == {"text", "url", "domain", "karma", "fetched_at"}
        assert record["domain"] == "127.0.0.1" and record["karma"] is None
        assert record["fetched_at"].endswith("+00:00")
    # politeness: one robots.txt request, our user agent on every request, no request for blocked pages
    assert site.requests["/robots.txt"] == 1
    assert site.requests["/private/secret"] == 0
    assert site.requests["/flaky"] == 2 and site.requests["/slow"] == 2
    assert all(agent.startswith("gpt2kit-webtext/") for _, _, agent in site.times)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["top_domains"] == [{"domain": "127.0.0.1", "documents": 10}]
    assert (out / "domains.tsv").read_text() == "127.0.0.1\t10\n"


def test_rerun_fetches_nothing_settled(tmp_path, site):
    site, _ = site
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(url_list(site.base)) + "\n")
    out = tmp_path / "out"
    build_webtext(fast_config("urls", [urls], out))
    first = read_shards(out)
    before = dict(site.requests)
    build_webtext(fast_config("urls", [urls], out))  # same settings: every task is complete
    assert dict(site.requests) == before and read_shards(out) == first
    changed = fast_config("urls", [urls], out)
    changed.filters.min_words = 70  # new settings redo the work, but from the fetch cache
    build_webtext(changed)
    retried = {path for path, count in site.requests.items() if count != before.get(path)}
    assert retried == {"/slow", "/robots.txt"}  # the transient failure is tried again, under fresh robots.txt
    assert stage_table(out)["fetch"] == EXPECTED_FIXTURE_STAGES["fetch"]
    assert sorted(r["url"] for r in read_shards(out)) == sorted(r["url"] for r in first)


def test_reddit_dump_filters_and_karma(tmp_path, site):
    site, valid = site
    base = site.base
    before_cutoff, after_cutoff = 1_500_000_000, 1_520_000_000  # 2017-07 and 2018-03
    rows = [
        {"url": f"{base}/article/1", "score": 3, "created_utc": before_cutoff, "subreddit": "history"},
        {"url": f"{base}/article/1/", "score": 40, "created_utc": before_cutoff, "subreddit": "news"},
        {"url": f"{base}/article/2", "score": "12", "created_utc": str(before_cutoff), "subreddit": "science"},
        {"url": f"{base}/article/3", "score": 2, "created_utc": before_cutoff, "subreddit": "history"},
        {"url": f"{base}/article/4", "score": 50, "created_utc": after_cutoff, "subreddit": "history"},
        {"url": f"{base}/article/5", "score": 50, "created_utc": before_cutoff, "subreddit": "Spam"},
        {"url": "https://www.reddit.com/r/x/comments/1", "score": 9, "created_utc": 1, "is_self": True},
        {"url": "https://www.reddit.com/r/history/", "score": 9, "created_utc": 1, "subreddit": "history"},
        {"score": 9, "created_utc": 1},
    ]
    lines = [json.dumps(row) for row in rows] + ["{not json"]
    dump = tmp_path / "RS_2017-12.zst"
    dump.write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))
    out = tmp_path / "out"
    config = fast_config("reddit", [dump], out, workers=2)
    config.reddit.subreddit_blocklist = ["spam"]
    build_webtext(config)
    stages = stage_table(out)
    assert stages["read"] == (
        10,
        4,
        {"after_cutoff": 1, "bad_json": 1, "blocked_subreddit": 1, "low_karma": 1, "no_url": 1, "self_post": 1},
    )
    assert stages["domain rules"] == (4, 3, {"reddit_internal": 1})
    assert stages["url dedup"] == (3, 2, {"duplicate_url": 1})
    records = sorted(read_shards(out), key=lambda r: r["url"])
    assert [(r["url"].removeprefix(base), r["karma"]) for r in records] == [("/article/1", 40), ("/article/2", 12)]


def write_warc(path: Path, base: str) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    pages = [
        ("http://news.example.org/one", "200 OK", "text/html; charset=utf-8", page("One", article_text(1)).encode()),
        ("http://blog.example.net/two", "200 OK", "text/html", page("Two", article_text(2)).encode()),
        ("http://blog.example.net/two-copy", "200 OK", "text/html", page("Two", article_text(2)).encode()),
        ("http://news.example.org/gone", "404 Not Found", "text/html", b"<html>gone</html>"),
        ("http://news.example.org/logo.png", "200 OK", "image/png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64),
        ("https://en.wikipedia.org/wiki/One", "200 OK", "text/html", page("Wiki", article_text(3)).encode()),
        ("http://de.example.org/", "200 OK", "text/html", page("De", GERMAN * 2).encode()),
    ]
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        for url, status, content_type, body in pages:
            headers = StatusAndHeaders(status, [("Content-Type", content_type)], protocol="HTTP/1.1")
            record = writer.create_warc_record(
                url,
                "response",
                payload=io.BytesIO(body),
                http_headers=headers,
                warc_headers_dict={"WARC-Date": "2017-11-30T12:00:00Z"},
            )
            writer.write_record(record)
        request = writer.create_warc_record(
            "http://news.example.org/one",
            "request",
            payload=io.BytesIO(b"GET /one HTTP/1.1\r\n\r\n"),
            http_headers=StatusAndHeaders("GET /one HTTP/1.1", [], is_http_request=True),
        )
        writer.write_record(request)


def test_warc_input(tmp_path):
    warc = tmp_path / "crawl.warc.gz"
    write_warc(warc, "")
    out = tmp_path / "out"
    build_webtext(fast_config("warc", [warc], out))
    stages = stage_table(out)
    assert stages["read"] == (7, 5, {"http_404": 1, "not_html": 1})
    assert stages["domain rules"] == (5, 4, {"wikipedia": 1})
    assert stages["English (py3langid)"] == (4, 3, {"not_english": 1})
    assert stages["exact dedup"] == (3, 2, {"duplicate": 1})
    records = read_shards(out)
    assert {r["url"] for r in records} <= {
        "http://news.example.org/one",
        "http://blog.example.net/two",
        "http://blog.example.net/two-copy",
    }
    assert len(records) == 2 and {r["domain"] for r in records} == {"news.example.org", "blog.example.net"}
    assert all(r["fetched_at"] == "2017-11-30T12:00:00Z" for r in records)
    rows = {s["stage"]: s for s in json.loads((out / "stats.json").read_text())["stages"]}
    line_rules = rows["boilerplate lines (C4 rules)"]["lines_removed"]  # per rule: lines and words
    assert line_rules and all(v["lines"] >= 1 for v in line_rules.values())
    assert sum(v["words"] for v in line_rules.values()) > 0  # the words removed are counted too


def test_html_dir_input_via_cli(tmp_path, capsys):
    pages = tmp_path / "saved"
    (pages / "sub").mkdir(parents=True)
    canonical = "<link rel='canonical' href='https://www.example.com/story/'>"
    (pages / "a.html").write_text(page("A", article_text(7)).replace("<title>", canonical + "<title>"))
    (pages / "sub" / "b.htm").write_text(page("B", article_text(8)))
    (pages / "notes.txt").write_text("not a page")
    out = tmp_path / "out"
    assert main(["webtext", "build", "--html-dir", str(pages), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "2 documents in 1 shards" in printed
    # datatrove's banners and per-task stats stay in its task logs unless -v asks for them
    assert "PIPELINE" not in captured.err and "Stats" not in captured.err
    assert "PIPELINE" in (out.with_name("out.work") / "logs" / "pages" / "logs" / "task_00000.log").read_text()
    urls = sorted(r["url"] for r in read_shards(out))
    assert urls[0].startswith("file://") and urls[0].endswith("sub/b.htm")
    assert urls[1] == "https://www.example.com/story"


def test_cli_bad_inputs_get_one_line(tmp_path, capsys):
    missing = main(["webtext", "build", "--urls", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o")])
    assert missing == 2 and "nope.txt: no such file" in capsys.readouterr().err
    dump = tmp_path / "dump.jsonl"
    dump.write_text("hello\n")
    assert main(["webtext", "build", "--reddit", str(dump), "--out", str(tmp_path / "o")]) == 2
    assert "dump.jsonl:1: not a Reddit submission dump" in capsys.readouterr().err
    bad_warc = tmp_path / "x.warc"
    bad_warc.write_bytes(b"this is not a warc file\n" * 4)
    assert main(["webtext", "build", "--warc", str(bad_warc), "--out", str(tmp_path / "o")]) == 2
    assert "not a WARC file" in capsys.readouterr().err
    urls = tmp_path / "u.txt"
    urls.write_text("")
    assert main(["webtext", "build", "--urls", str(urls), "--out", str(tmp_path / "o")]) == 2
    assert "empty input" in capsys.readouterr().err
    urls.write_text("https://example.com/\n")
    assert main(["webtext", "build", "--urls", str(urls), "--out", str(tmp_path / "o"), "--workers", "0"]) == 2
    assert "workers must be at least 1, got 0" in capsys.readouterr().err
    assert main(["webtext", "build", "--urls", str(urls), "--out", "o", "--set", "fetch.timeout=soon"]) == 2
    assert "fetch.timeout must be a number, got 'soon'" in capsys.readouterr().err


def test_per_domain_rate_limit_and_robots(site):
    site, _ = site
    config = WebTextConfig().fetch
    config.per_domain_delay = 0.25
    fetcher = Fetcher(config, "/unused", lambda domain: None)
    from gpt2kit.webtext.fetch import _Session  # the batch machinery, without a cache

    async def run():
        import aiohttp

        async with aiohttp.ClientSession(headers={"User-Agent": config.user_agent}) as session:
            client = _Session(fetcher, session, {})
            return [await client.fetch(f"{site.base}/article/{i}") for i in range(1, 4)]

    started = time.monotonic()
    outcomes = asyncio.run(run())
    assert all(outcome.cause is None for outcome in outcomes)
    times = [t for _, t, _ in site.times]
    assert [path for path, _, _ in site.times] == ["/robots.txt", "/article/1", "/article/2", "/article/3"]
    assert all(b - a >= 0.24 for a, b in zip(times, times[1:], strict=False))
    assert time.monotonic() - started >= 0.74


def test_fetch_cache_survives_a_torn_line(tmp_path):
    cache = FetchCache(tmp_path, "0001-00000", lambda domain: True)
    cache.record("a.org/1", "a.org", Outcome(None, "<html>one</html>", "https://a.org/1", "t"))
    cache.record("a.org/2", "a.org", Outcome("http_404"))
    cache.record("a.org/3", "a.org", Outcome("timeout"))
    cache.close()
    with open(tmp_path / "0001-00000.index.jsonl", "ab") as handle:
        handle.write(b'{"key": "a.org/4", "dom')  # killed mid-write
    again = FetchCache(tmp_path, "0002-00001", lambda domain: domain == "a.org")
    assert again.settled("a.org/1").html == "<html>one</html>"
    assert again.settled("a.org/2").cause == "http_404"
    assert again.settled("a.org/3") is None  # transient: fetched again
    assert again.settled("a.org/4") is None
    assert FetchCache(tmp_path, "0002-00000", lambda domain: False).settled("a.org/1") is None
    again.close()


def test_url_normalisation():
    assert normalise_url("HTTP://WWW.Example.com:80/a/b/?utm_source=x&b=2&a=1&fbclid=z#frag") == (
        "http://www.example.com/a/b?a=1&b=2"
    )
    assert url_key(normalise_url("https://www.example.com/a/")) == url_key(normalise_url("http://example.com/a"))
    assert normalise_url("ftp://example.com/x") is None and normalise_url("not a url") is None
    assert normalise_url("http://bücher.de/x") == "http://xn--bcher-kva.de/x"
    assert url_domain("https://www.news.example.co.uk:8080/x") == "news.example.co.uk"


def test_config_files_and_overrides(tmp_path):
    toml = tmp_path / "webtext.toml"
    toml.write_text('workers = 3\n[fetch]\nper_domain_delay = 2\n[filters]\ndomain_blocklist = ["a.com"]\n')
    yaml_file = tmp_path / "webtext.yaml"
    yaml_file.write_text("reddit:\n  min_karma: 5\n  cutoff: null\n")
    config = WebTextConfig(inputs=["x"])
    apply_values(config, read_config_file(toml), str(toml))
    apply_values(config, read_config_file(yaml_file), str(yaml_file))
    apply_overrides(config, ["dedup.num_buckets=20", "filters.boilerplate=false"])
    assert (config.workers, config.fetch.per_domain_delay, config.filters.domain_blocklist) == (3, 2.0, ["a.com"])
    assert config.reddit.min_karma == 5 and config.reddit.cutoff is None
    assert config.dedup.num_buckets == 20 and config.filters.boilerplate is False
    assert 0.5 < WebTextConfig().dedup.threshold < 0.8
    with pytest.raises(GPT2KitError, match="unknown field 'fetch.speed'"):
        apply_values(config, {"fetch": {"speed": 1}}, "x.toml")
    with pytest.raises(GPT2KitError, match="reddit.cutoff must be a date"):
        apply_values(config, {"reddit": {"cutoff": "soon"}}, "x.toml")
        config.check()
    (tmp_path / "bad.toml").write_text("workers = [")
    with pytest.raises(GPT2KitError, match="bad.toml: invalid TOML"):
        read_config_file(tmp_path / "bad.toml")


def test_near_copy_differs_by_two_words():
    text = article_text(300, sentences=30)
    changed = [a for a, b in zip(text.split(), near_copy(text).split(), strict=True) if a != b]
    assert 1 <= len(changed) <= 3


def test_output_feeds_the_overlap_filter(tmp_path, site):
    """The shards are JSON lines with a text field: what `gpt2kit prepare` and `gpt2kit overlap` read."""
    from gpt2kit.data.bloom import build_filter
    from gpt2kit.data.overlap import check_overlap

    site, valid = site
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(f"{site.base}/article/{i}" for i in range(1, 4)) + "\n")
    out = tmp_path / "out"
    build_webtext(fast_config("urls", [urls], out))
    result = build_filter([out], tmp_path / "web.bloom")
    assert result.documents == 3 and result.files == 1
    test = tmp_path / "test.txt"
    test.write_text(valid["/article/2"].split("\n\n")[0] + "\n" + article_text(999).split("\n\n")[0] + "\n")
    (row,) = check_overlap(result.path, [test], unit="line")
    assert [flag["fraction"] for flag in row.flags][0] == 1.0


def gutenberg_pages(book: str, count: int = 4, paragraphs: int = 12) -> list[str]:
    """Pages as extraction leaves them (one paragraph per line), cut from a Gutenberg book."""
    from tests.conftest import shared_file

    text = next(shared_file("train/gutenberg").glob(f"*{book}*.txt")).read_text(encoding="utf-8")
    paras = [" ".join(p.split()) for p in text.split("\n\n") if len(p.split()) >= 8]
    start = len(paras) // 3
    return ["\n".join(paras[start + i * paragraphs : start + (i + 1) * paragraphs]) for i in range(count)]


@pytest.mark.parametrize("book", ["emma", "northanger-abbey", "pride-and-prejudice"])
def test_c4_rules_keep_dialogue_that_ends_in_a_closing_quote(book):
    from datatrove.data import Document
    from datatrove.pipeline.filters import C4QualityFilter

    from gpt2kit.webtext.steps import C4LineRules, RegexWordTokenizer, ends_sentence

    assert ends_sentence("he said, “I am not the cleverest man.”") and ends_sentence("(as they say.)")
    assert not ends_sentence("Chapter the first”") and not ends_sentence("and then...”")
    tokenizer = RegexWordTokenizer()
    ours, datatroves = (
        C4LineRules(min_num_sentences=3, language=tokenizer),
        C4QualityFilter(min_num_sentences=3, language=tokenizer),
    )
    kept = {"ours": 0, "datatrove": 0}
    total = 0
    for text in gutenberg_pages(book):
        total += len(text.split())
        for name, rules in (("ours", ours), ("datatrove", datatroves)):
            document = Document(text=text, id="p")
            if rules.filter(document) is True:
                kept[name] += len(document.text.split())
    assert kept["ours"] >= 0.9 * total, (kept, total)  # fiction keeps its dialogue
    assert kept["datatrove"] < kept["ours"]
    counted = {key: value.total for key, value in ours.stats.stats.items()}
    assert counted["line-total"] > 0 and counted.get("words-filter-too_few_words", 0) >= counted.get(
        "line-filter-too_few_words", 0
    )
