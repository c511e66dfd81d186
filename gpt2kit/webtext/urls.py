"""URL normalisation and domain rules: the first stage of the WebText pipeline."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

# Query parameters that only track where a click came from; they never change the page.
TRACKING_PARAMS = frozenset(
    {
        "fbclid",
        "gclid",
        "dclid",
        "msclkid",
        "mc_cid",
        "mc_eid",
        "igshid",
        "yclid",
        "ref",
        "ref_src",
        "ref_url",
        "referrer",
        "share",
        "cmpid",
        "s_cid",
        "_ga",
        "_hsenc",
        "_hsmi",
        "spm",
        "si",
    }
)
TRACKING_PREFIXES = ("utm_", "pk_", "mtm_", "hmb_", "ga_")

# Wikipedia, its sister sites and well-known mirrors. WebText removed all Wikipedia pages because
# Wikipedia is in many test sets; mirrors carry the same text.
WIKIPEDIA_DOMAINS = (
    "wikipedia.org",
    "wikipedia.com",
    "wikimedia.org",
    "wikidata.org",
    "wikiwand.com",
    "wikimili.com",
    "wiki2.org",
    "wikizero.com",
    "wikiless.org",
    "infogalactic.com",
    "justapedia.org",
    "dbpedia.org",
    "everipedia.org",
    "en-academic.com",
    "thereaderwiki.com",
    "wikiital.com",
    "wikibrief.org",
    "db0nus869y26v.cloudfront.net",
)
# Links back into Reddit are not outbound links.
REDDIT_DOMAINS = ("reddit.com", "redd.it", "redditmedia.com", "reddituploads.com")
DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_url(url: str) -> str | None:
    """A canonical form of an http(s) URL, or None if it is not one.

    Lower-cased scheme and host, no default port, no fragment, no tracking parameters, the remaining query
    parameters sorted, and no trailing slash on the path. Scheme and `www.` are kept so the URL can still be
    fetched as linked; `url_key` drops both for deduplication.
    """
    url = url.strip()
    if not url or any(ch.isspace() for ch in url):
        return None
    if url.startswith("//"):
        url = "https:" + url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if scheme not in ("http", "https") or not host or "." not in host and host != "localhost":
        return None
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    netloc = host if port is None or port == DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = quote(unquote(parts.path), safe="/:@!$&'()*+,;=-._~%") or "/"
    while "//" in path:
        path = path.replace("//", "/")
    if len(path) > 1:
        path = path.rstrip("/")
    query = sorted(
        (key, value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
        if key.lower() not in TRACKING_PARAMS and not key.lower().startswith(TRACKING_PREFIXES)
    )
    return urlunsplit((scheme, netloc, path, urlencode(query), ""))


def url_key(normalised: str) -> str:
    """The deduplication key of a normalised URL: the same page is often linked as both http and https."""
    rest = normalised.split("://", 1)[-1]
    return rest[4:] if rest.startswith("www.") and rest.split("/", 1)[0].count(".") >= 2 else rest


def url_domain(url: str) -> str:
    """The host of a URL without `www.` and port, lower-cased ('' if none)."""
    try:
        host = (urlsplit(url).hostname or "").rstrip(".")
    except ValueError:
        return ""
    return host[4:] if host.startswith("www.") and host.count(".") >= 2 else host


def domain_matches(domain: str, rules: Iterable[str]) -> bool:
    """Whether `domain` is one of `rules` or a subdomain of one."""
    return any(domain == rule or domain.endswith("." + rule) for rule in rules)
