"""Fetch a URL and print its title and a text excerpt as JSON (arguments: JSON object on stdin)."""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.request
from html.parser import HTMLParser
from typing import Any

ALLOWED_SCHEMES = ("http://", "https://", "data:")
MAX_BYTES = 2 * 1024 * 1024
SKIPPED_TAGS = {"script", "style", "noscript", "template", "svg", "head"}


class _TextExtractor(HTMLParser):
    """Collects the <title> and the visible text of an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.parts: list[str] = []
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in SKIPPED_TAGS:
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in SKIPPED_TAGS and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip:
            self.parts.append(data)


def summarize(body: str, content_type: str, max_chars: int) -> dict[str, Any]:
    """Title and collapsed text of an HTML or plain-text body."""
    title, text = "", body
    if "html" in content_type:
        parser = _TextExtractor()
        parser.feed(body)
        parser.close()
        title, text = parser.title, " ".join(parser.parts)
    text = re.sub(r"\s+", " ", text).strip()
    return {"title": re.sub(r"\s+", " ", title).strip(), "text": text[:max_chars], "truncated": len(text) > max_chars}


def fetch(url: str, max_chars: int, timeout: float) -> dict[str, Any]:
    """Fetch and summarize; raises ValueError or OSError with a readable message."""
    if not url.startswith(ALLOWED_SCHEMES):
        raise ValueError("only http, https and data URLs are allowed")
    request = urllib.request.Request(url, headers={"User-Agent": "switchboard-skill/1.0"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read(MAX_BYTES + 1)
        content_type = response.headers.get_content_type()
        charset = response.headers.get_content_charset() or "utf-8"
        status = getattr(response, "status", None)
        final_url = response.geturl()
    body = raw[:MAX_BYTES].decode(charset, errors="replace")
    summary = summarize(body, content_type, max_chars)
    return {"url": final_url, "status": status, "content_type": content_type, **summary}


def main() -> int:
    """Read arguments, print the result or an error object."""
    try:
        args = json.loads(sys.stdin.read() or "{}")
        url = str(args["url"])
        max_chars = max(1, min(int(args.get("max_chars", 2000)), 20000))
        timeout = float(args.get("timeout", 15))
        print(json.dumps(fetch(url, max_chars, timeout), ensure_ascii=False))
    except KeyError:
        print(json.dumps({"error": "missing argument: url"}))
        return 1
    except urllib.error.HTTPError as exc:
        print(json.dumps({"error": f"HTTP {exc.code} {exc.reason}"}))
        return 1
    except (ValueError, OSError) as exc:
        print(json.dumps({"error": str(exc) or type(exc).__name__}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
