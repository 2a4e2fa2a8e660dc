"""Outbound text shaping for WeChat OA / WeCom: plain text (no markdown renders there) in pieces that fit.

Both platforms reject (45002) or silently truncate text over 2048 UTF-8 bytes, so every piece is
measured in bytes *including* what we add to it: the "(i/N) " number and, in markdown mode, the
fence lines that close a code block cut in two and reopen it in the next piece. Cut points are
chosen by readability: blank line > line end > sentence end > clause mark > space > any character,
taking the best kind that still fills at least half a piece (so a stray early paragraph break does
not waste a message) and never splitting a code line that would fit whole, nor a grapheme cluster
(emoji ZWJ sequences, flags, combining marks) unless it alone is longer than a piece.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import accumulate

from adapters.wxcommon.markdown import Fence, find_fences, markdown_to_plain, to_plain_lines

__all__ = ["markdown_to_plain", "shape_text", "split_utf8"]

MIN_LIMIT = 64
_CJK = "\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\U00020000-\U0003134f"
_CLOSERS = "”’」』）》\"')\\]"
_PARAGRAPH = re.compile(r"\n[^\S\n]*+\n")
_NEWLINE = re.compile(r"\n")
_SENTENCE = re.compile(
    rf"[。！？；…]++[{_CLOSERS}]*+|(?<![.!?;])[.!?;]++[{_CLOSERS}]*+(?=\s|$|[{_CJK}])"
)  # full-width marks always end a sentence; ASCII ones only before space/CJK/end (not "3.14", "a.b")
_CLAUSE = re.compile(r"[，、：]|[,:](?=\s)")
_SPACE = re.compile(r"[^\S\n]++")
_LEADING_SPACE = re.compile(r"\s*+")
_SURROGATE = re.compile("[\ud800-\udfff]")
_EXTENDERS = re.compile("[\u200d\u20e3\ufe00-\ufe0f\U0001f3fb-\U0001f3ff\U000e0020-\U000e007f\U000e0100-\U000e01ef]")
_ZWJ = "\u200d"


def split_utf8(text: str, limit: int = 2048, *, number: bool = True) -> list[str]:
    """Pieces of `text`, each at most `limit` UTF-8 bytes including its "(i/N) " prefix.

    Lines inside fenced code blocks are kept whole (fences are not repaired here; see shape_text).
    """
    lines = text.split("\n")
    code = _fence_lines(find_fences(lines), len(lines))
    return _split(text, limit, code, [], number=number, separator=" ")


def shape_text(md: str, limit: int = 2048, *, markdown: bool = False) -> list[str]:
    """The adapters' entry point: an LLM answer as ready-to-send pieces.

    markdown=False (WeChat OA, WeCom text): converted to plain text first; code lines stay whole.
    markdown=True (WeCom markdown messages): kept as markdown; a code block cut in two is closed
    at the end of one piece and reopened, with its info string, at the start of the next. The
    number goes on its own line there, so a piece that starts with a heading, list or fence still
    renders as one.
    """
    if markdown:
        lines = md.split("\n")
        fences = find_fences(lines)
        return _split(md, limit, _fence_lines(fences, len(lines)), fences, number=True, separator="\n")
    plain = to_plain_lines(md)
    return _split("\n".join(t for t, _ in plain), limit, [c for _, c in plain], [], number=True, separator=" ")


def _fence_lines(fences: list[Fence], count: int) -> list[bool]:
    code = [False] * count
    for f in fences:
        code[f.open : f.close + 1] = [True] * (min(f.close, count - 1) + 1 - f.open)
    return code


@dataclass(frozen=True)
class _Layout:
    """Everything about the text the cutter needs, computed once per call."""

    text: str
    cum: list[int]  # cum[i] = UTF-8 bytes of text[:i]
    starts: list[int]  # index of the first character of each line
    code: list[bool]  # per line: keep whole unless it alone exceeds a piece
    kinds: tuple[list[int], ...]  # candidate cut indexes, best kind first
    reopen: dict[int, str]  # line -> fence line to prepend when a piece starts there
    close: dict[int, str]  # line -> fence line to append when a piece ends there
    no_cut: frozenset[int]  # cuts that would leave an empty code block behind
    max_close: int

    def line_of(self, index: int) -> int:
        return bisect_right(self.starts, index) - 1

    def line_end(self, line: int) -> int:
        return self.starts[line + 1] - 1 if line + 1 < len(self.starts) else len(self.text)


def _split(text: str, limit: int, code: list[bool], fences: list[Fence], *, number: bool, separator: str) -> list[str]:
    if limit < MIN_LIMIT:
        raise ValueError(f"limit must be at least {MIN_LIMIT} bytes, got {limit}")
    text = _SURROGATE.sub("\ufffd", text)  # lone surrogates cannot be encoded, let alone sent
    start, _ = _next_start(text, 0)
    whole = text[start:].rstrip()
    if not whole or len(whole.encode()) <= limit:
        return [whole] if whole else []
    layout = _layout(text, code, fences, limit)
    if not number:
        return _cut(layout, limit, 0)
    digits = 1
    while True:  # the prefix width depends on the count, which depends on the prefix width
        pieces = _cut(layout, limit, 2 * digits + 4)
        if len(str(len(pieces))) <= digits:
            break
        digits = len(str(len(pieces)))
    return [f"({i}/{len(pieces)}){separator}{piece}" for i, piece in enumerate(pieces, 1)]


def _layout(text: str, code: list[bool], fences: list[Fence], limit: int) -> _Layout:
    reopen: dict[int, str] = {}
    close: dict[int, str] = {}
    no_cut: set[int] = set()
    starts = [0, *(m.end() for m in _NEWLINE.finditer(text))]
    for f in fences:
        if len(f.marker) > limit // 4:
            continue  # absurdly long fence: repairing it could not fit, leave it as it is
        header = f.opener if len(f.opener.encode()) <= limit // 4 else f.marker
        for line in range(f.open + 1, min(f.close + 1, len(starts))):
            reopen[line] = header + "\n"
        for line in range(f.open, min(f.close, len(starts))):
            close[line] = "\n" + f.marker
        no_cut.add(starts[f.open + 1] - 1 if f.open + 1 < len(starts) else len(text))
        if f.close < len(starts):
            no_cut.add(starts[f.close] - 1)
    return _Layout(
        text=text,
        cum=list(accumulate((_utf8_len(ch) for ch in text), initial=0)),
        starts=starts,
        code=code,
        kinds=(
            [m.start() for m in _PARAGRAPH.finditer(text)],
            [m.start() for m in _NEWLINE.finditer(text)],
            [m.end() for m in _SENTENCE.finditer(text)],
            [m.end() for m in _CLAUSE.finditer(text)],
            [m.start() for m in _SPACE.finditer(text)],
        ),
        reopen=reopen,
        close=close,
        no_cut=frozenset(no_cut),
        max_close=max((len(c) for c in close.values()), default=0),
    )


def _utf8_len(ch: str) -> int:
    o = ord(ch)
    return 1 if o < 0x80 else 2 if o < 0x800 else 3 if o < 0x10000 else 4


def _cut(lay: _Layout, limit: int, reserve: int) -> list[str]:
    """Greedy left-to-right cutting; `reserve` bytes per piece are left for the number prefix."""
    text, cum = lay.text, lay.cum
    pieces: list[str] = []
    pos = 0
    while True:
        start, first = _next_start(text, pos)
        if first >= len(text):
            return pieces
        head = lay.reopen.get(lay.line_of(start), "")
        room = limit - reserve - len(head.encode())
        if cum[-1] - cum[start] <= room:
            end = len(text)
        else:
            budget = room - lay.max_close
            end = _choose(lay, start, first, bisect_right(cum, cum[start] + budget) - 1, budget)
        body = text[start:end].rstrip()
        if body.strip():
            tail = lay.close.get(lay.line_of(start + len(body) - 1), "") if end < len(text) else ""
            pieces.append(head + body + tail)
        pos = end


def _next_start(text: str, pos: int) -> tuple[int, int]:
    """Where the piece after a cut at `pos` begins, and its first non-space character.

    Blank lines are dropped, but a piece that begins at a line start keeps that line's
    indentation: it matters for code and nested lists.
    """
    spaces = _LEADING_SPACE.match(text, pos)
    first = spaces.end() if spaces else pos
    newline = text.rfind("\n", pos, first)
    if newline != -1:
        return newline + 1, first
    if pos == 0 or text[pos - 1] == "\n":
        return pos, first
    return first, first


def _choose(lay: _Layout, start: int, first: int, last: int, budget: int) -> int:
    """The cut index for a piece starting at `start` that may end no later than `last`."""
    half = bisect_left(lay.cum, lay.cum[start] + budget // 2)
    fallback: int | None = None
    for candidates in lay.kinds:
        cut = _best(lay, candidates, first, last, budget)
        if cut is not None and cut >= half:
            return cut
        if fallback is None:
            fallback = cut
    if fallback is not None:
        return fallback
    cut = last
    line = lay.line_of(cut)
    if _inside_whole_line(lay, line, cut, budget) and lay.starts[line] > first:
        return lay.starts[line]
    return _grapheme_floor(lay.text, cut, first + 1)


def _best(lay: _Layout, candidates: list[int], first: int, last: int, budget: int) -> int | None:
    """The latest allowed candidate in (first, last], skipping whole code lines in one step."""
    k = bisect_right(candidates, last) - 1
    while k >= 0 and candidates[k] > first:
        cut = candidates[k]
        line = lay.line_of(cut)
        if _inside_whole_line(lay, line, cut, budget):
            k = bisect_right(candidates, lay.starts[line]) - 1
        elif cut in lay.no_cut:
            k -= 1
        else:
            return cut
    return None


def _inside_whole_line(lay: _Layout, line: int, cut: int, budget: int) -> bool:
    """True if `cut` falls inside a code line that fits in a piece and so must stay whole."""
    begin, end = lay.starts[line], lay.line_end(line)
    return lay.code[line] and begin < cut < end and lay.cum[end] - lay.cum[begin] <= budget


def _grapheme_floor(text: str, cut: int, floor: int) -> int:
    """Move `cut` back off the inside of a grapheme cluster; give up (keep `cut`) if that reaches `floor`."""
    at = cut
    while at > floor and _joined(text, at, floor):
        at -= 1
    return at if at > floor or not _joined(text, at, floor) else cut


def _joined(text: str, at: int, floor: int) -> bool:
    """Whether text[at - 1] and text[at] are one user-perceived character (looking back no further than `floor`)."""
    if at <= 0 or at >= len(text):
        return False
    nxt, prev = text[at], text[at - 1]
    if prev == _ZWJ or _EXTENDERS.match(nxt) or unicodedata.category(nxt) in ("Mn", "Me", "Mc"):
        return True
    if _regional(nxt) and _regional(prev):
        run = 0
        while at - run - 1 >= floor - 1 and _regional(text[at - run - 1]):
            run += 1
        return run % 2 == 1  # flags are pairs: cutting after an odd count splits one
    return False


def _regional(ch: str) -> bool:
    return "\U0001f1e6" <= ch <= "\U0001f1ff"
