"""Markdown → plain text, because WeChat OA and WeCom text messages render no markdown at all.

Output format (chosen to read naturally in a chat bubble and to come back unchanged when run
through again, so already-plain answers are never mangled):

- headings → their text, set off by a blank line above and below
- `- x` / `* x` / `+ x` → `• x` (indentation kept); task items `- [ ] x` / `- [x] x` → `☐ x` / `☑ x`
- `1. x` → unchanged; `> x` → `> x`: quote markers stay as written, markdown inside them is converted
- `[text](url)` → `text (url)` (just `url` when the text is the url); `<url>` → `url`
- `![alt](url)` → `[图片: alt] url`; tables → one line per row, cells joined by ` | `
- `---` / `***` / `___` → `————————`; fenced code → its lines verbatim, set off by blank lines
- emphasis / strike / inline-code markers dropped; backslash escapes honoured; HTML left as is
- at most two consecutive blank lines; whitespace-only lines become empty

Emphasis deliberately differs from CommonMark in one way: a `*` or `_` delimiter touching an
ASCII letter or digit on its outer side is literal, so `2*3*4`, `a_b_c` and `x**2` survive
while CJK text such as `这是**重点**内容` (where CommonMark's own flanking rules often fail) works.
Every regex here is linear on adversarial input: answers can be 100 KB of LLM output.
"""

from __future__ import annotations

import re
from itertools import zip_longest
from typing import Literal, NamedTuple

RULE = "—" * 8
_S = "\x00"  # stands in for protected text (code, urls, escapes); real NULs become U+FFFD first

_FENCE_OPEN = re.compile(r"[ \t]*+(`{3,}+|~{3,}+)(.*)")
_FENCE_CLOSE = re.compile(r"[ \t]*+(`{3,}+|~{3,}+)[ \t\r]*+")
_HEADING = re.compile(r"[ \t]{0,3}(#{1,6})(?:[ \t]+|$)")
_RULE_LINE = re.compile(r"[ \t]{0,3}(?:(?:\*[ \t]*+){3,}+|(?:-[ \t]*+){3,}+|(?:_[ \t]*+){3,}+)")
_SETEXT = re.compile(r"[ \t]{0,3}(?:=++|-++)[ \t]*+")
_BULLET = re.compile(r"([ \t]*)[-*+][ \t]+(.*)")
_ORDERED = re.compile(r"[ \t]*\d{1,9}[.)][ \t]+")
_QUOTE = re.compile(r"(?: *+> ?+)++")
_TASK = re.compile(r"\[([ xX])\][ \t]+")
_TABLE_CELL_SEP = re.compile(r"[ \t]*:?-+:?[ \t]*")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_PROTECT = re.compile(
    r"\\([!-/:-@\[-`{-~])"
    r"|(`++)"
    r"|<((?:https?|ftp)://[^\s<>\x00]*+|mailto:[^\s<>\x00]++|[\w.+-]++@[\w-]++(?:\.[\w-]++)++)>"
)
_URL_CHARS = r"[^\s()\x00]*+"
_LINKISH = re.compile(
    rf"(?P<img>!)?\[(?P<label>[^\[\]\n]*+)\]\((?P<url>{_URL_CHARS}(?:\({_URL_CHARS}\){_URL_CHARS})*+)"
    r"(?:[ \t]++(?:\"[^\"\n\x00]*+\"|'[^'\n\x00]*+'))?[ \t]*+\)"
    r"|(?P<bare>(?:https?|ftp)://[A-Za-z0-9\-._~:/?#@!$&'()+,;=%]++)"
)
_DELIMS = re.compile(r"\*++|_++|~++")
_Kind = Literal["para", "heading", "other"]


class Fence(NamedTuple):
    """A fenced code block by line numbers; `close` is len(lines) when the fence is never closed."""

    open: int
    close: int
    opener: str  # the opening line without indentation, e.g. "```python"
    marker: str  # the shortest valid closing line, e.g. "```"


def find_fences(lines: list[str]) -> list[Fence]:
    """Fenced blocks, CommonMark-style but accepting any indentation (LLMs nest fences in lists)."""
    fences: list[Fence] = []
    i = 0
    while i < len(lines):
        m = _FENCE_OPEN.fullmatch(lines[i])
        if m is None or (m[1][0] == "`" and "`" in m[2]):  # "```x```" is inline code, not a fence
            i += 1
            continue
        marker = m[1]
        j = i + 1
        while j < len(lines):
            c = _FENCE_CLOSE.fullmatch(lines[j])
            if c is not None and c[1][0] == marker[0] and len(c[1]) >= len(marker):
                break
            j += 1
        fences.append(Fence(i, j, lines[i].strip(), marker[0] * len(marker)))
        i = j + 1
    return fences


def markdown_to_plain(md: str) -> str:
    """Plain text for a markdown answer; total (never raises), see the module docstring for the format."""
    return "\n".join(line for line, _ in to_plain_lines(md))


def to_plain_lines(md: str) -> list[tuple[str, bool]]:
    """The plain text as (line, is_code) pairs, so the splitter can keep code lines whole after the fences are gone."""
    lines = md.replace("\r\n", "\n").replace("\r", "\n").replace(_S, "\ufffd").split("\n")
    fences = {f.open: f for f in find_fences(lines)}
    out = _Lines()
    prev_para = False
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = fences.get(i)
        if fence is not None:
            out.block([(code, True) for code in lines[i + 1 : fence.close]])
            i, prev_para = fence.close + 1, False
            continue
        if "|" in line and i + 1 < len(lines) and _is_table_separator(lines[i + 1]):
            rows = [_table_row(line)]
            i += 2
            while i < len(lines) and "|" in lines[i] and lines[i].strip() and i not in fences:
                rows.append(_table_row(lines[i]))
                i += 1
            out.block([(row, False) for row in rows])
            prev_para = False
            continue
        if prev_para and _SETEXT.fullmatch(line):
            out.separate = True  # "Title\n===" / "Title\n---": the previous line was a heading
            prev_para = False
        else:
            text, kind = _block_line(line)
            if kind == "heading":
                out.block([(text, False)])
            else:
                out.add(text)
            prev_para = kind == "para"
        i += 1
    return out.lines


class _Lines:
    """Output accumulator that owns the blank-line rules (separation around blocks, collapsing runs)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, bool]] = []
        self.separate = False  # the next non-blank line must be preceded by a blank one

    def add(self, text: str, code: bool = False) -> None:
        blank = not code and not text.strip()
        if blank:
            self.separate = False
            if len(self.lines) >= 2 and not self.lines[-1][0] and not self.lines[-2][0]:
                return
            text = ""
        elif self.separate:
            self.separate = False
            if self.lines and self.lines[-1][0]:
                self.lines.append(("", False))
        self.lines.append((text, code))

    def block(self, lines: list[tuple[str, bool]]) -> None:
        if self.lines and self.lines[-1][0]:
            self.lines.append(("", False))
        self.separate = False
        for text, code in lines:
            self.add(text, code)
        self.separate = True


def _block_line(line: str) -> tuple[str, _Kind]:
    """One non-code line converted; the kind decides blank lines around headings and setext underlines."""
    if not line.strip():
        return "", "other"
    if _RULE_LINE.fullmatch(line):
        return RULE, "other"
    m = _HEADING.match(line)
    if m is not None:
        text = line[m.end() :].strip()
        bare = text.rstrip("#")
        if bare != text and (not bare or bare[-1] in " \t"):  # optional closing "## "
            text = bare.rstrip()
        return _inline(text), "heading"
    stripped = line.lstrip(" ")
    if stripped.startswith(">") and len(line) - len(stripped) <= 3:
        markers = _QUOTE.match(line)
        prefix = markers[0] if markers else ""
        inner, _ = _block_line(line[len(prefix) :])
        return (prefix + inner).rstrip(), "other"  # markers kept as written: ">>> x" may be a REPL prompt
    m = _BULLET.fullmatch(line)
    if m is not None:
        indent, item = m[1], m[2]
        task = _TASK.match(item)
        mark = "•" if task is None else ("☐" if task[1] == " " else "☑")
        return f"{indent}{mark} {_inline(item[task.end() :] if task else item)}", "other"
    m = _ORDERED.match(line)
    if m is not None:
        return m[0] + _inline(line[m.end() :]), "other"
    return _inline(line), "para"


def _is_table_separator(line: str) -> bool:
    row = line.strip()
    if "|" not in row or "-" not in row:
        return False
    row = row.removeprefix("|").removesuffix("|")
    return all(_TABLE_CELL_SEP.fullmatch(cell) for cell in row.split("|"))


def _table_row(line: str) -> str:
    row = line.strip().removeprefix("|")
    if row.endswith("|") and not row.endswith("\\|"):
        row = row[:-1]
    return " | ".join(_inline(cell.strip()) for cell in _CELL_SPLIT.split(row))


def _inline(text: str) -> str:
    """One line without inline markdown: code, escapes and urls are protected first, then links, then emphasis."""
    work, lits = _protect(text)
    work, lits = _links(work, lits)
    return _restore(_strip_emphasis(work), lits)


def _protect(text: str) -> tuple[str, list[str]]:
    """Swap code spans, escapes and autolinks for `_S` so nothing later can touch their contents."""
    events = list(_PROTECT.finditer(text))
    partner: dict[int, int] = {}
    next_of_length: dict[int, int] = {}
    for k in range(len(events) - 1, -1, -1):  # a code span closes at the next run of equal length
        run = events[k][2]
        if run is not None:
            if len(run) in next_of_length:
                partner[k] = next_of_length[len(run)]
            next_of_length[len(run)] = k
    parts: list[str] = []
    lits: list[str] = []
    pos = k = 0
    while k < len(events):
        m = events[k]
        if m[2] is not None and k not in partner:
            k += 1  # an unmatched backtick run is literal text
            continue
        parts.append(text[pos : m.start()])
        parts.append(_S)
        if m[2] is not None:
            close = events[partner[k]]
            code = text[m.end() : close.start()]
            if len(code) >= 2 and code[0] == code[-1] == " " and code.strip():
                code = code[1:-1]
            lits.append(code)
            pos, k = close.end(), partner[k] + 1
        else:
            lits.append(m[1] if m[1] is not None else m[3])
            pos, k = m.end(), k + 1
    parts.append(text[pos:])
    return "".join(parts), lits


def _links(work: str, lits: list[str]) -> tuple[str, list[str]]:
    """Links, images and bare urls rewritten; urls become protected so emphasis can't eat `_` in them."""
    parts: list[str] = []
    new: list[str] = []
    pos = used = 0
    for m in _LINKISH.finditer(work):
        head = work[pos : m.start()]
        n = head.count(_S)
        parts.append(head)
        new.extend(lits[used : used + n])
        used += n
        pos = m.end()
        if m["bare"] is not None:
            parts.append(_S)
            new.append(m["bare"])
            continue
        label, url = m["label"], m["url"]
        url = url[1:-1] if url.startswith("<") and url.endswith(">") else url
        n = label.count(_S)
        label_lits, used = lits[used : used + n], used + n
        if m["img"]:
            parts.append(f"[图片: {label.strip()}]" if label.strip() else "[图片]")
            new.extend(label_lits)
            if url:
                parts.append(" " + _S)
                new.append(url)
        elif not url:
            parts.append(label)
            new.extend(label_lits)
        elif not label.strip() or _restore(label, label_lits).strip() in (url, url.removeprefix("mailto:")):
            parts.append(_S)
            new.append(url)
        else:
            parts.append(f"{label} ({_S})")
            new.extend([*label_lits, url])
    parts.append(work[pos:])
    new.extend(lits[used:])
    return "".join(parts), new


def _strip_emphasis(work: str) -> str:
    """Drop matched `*`/`_` runs of length 1-3 and `~~` pairs (see the module docstring for the rule)."""
    runs = list(_DELIMS.finditer(work))
    openers: dict[tuple[str, int], list[int]] = {}
    drop: set[int] = set()
    for k, m in enumerate(runs):
        char, size = m[0][0], len(m[0])
        if size > 3 or (char == "~" and size != 2):
            continue
        before = work[m.start() - 1] if m.start() else " "
        after = work[m.end()] if m.end() < len(work) else " "
        stack = openers.setdefault((char, size), [])
        if stack and not before.isspace() and not (after.isascii() and after.isalnum()):
            drop.update((stack.pop(), k))
        elif not after.isspace() and not (before.isascii() and before.isalnum()):
            stack.append(k)
    if not drop:
        return work
    parts: list[str] = []
    pos = 0
    for k in sorted(drop):
        parts.append(work[pos : runs[k].start()])
        pos = runs[k].end()
    parts.append(work[pos:])
    return "".join(parts)


def _restore(work: str, lits: list[str]) -> str:
    pieces = work.split(_S)
    return pieces[0] + "".join(lit + piece for lit, piece in zip_longest(lits, pieces[1:], fillvalue=""))
