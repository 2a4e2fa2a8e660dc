"""Outbound text shaping for WeChat / WeCom: markdown → plain text and byte-limited splitting."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.wxcommon.markdown import RULE, find_fences
from adapters.wxcommon.text import markdown_to_plain, shape_text, split_utf8

NUMBER = re.compile(r"\((\d+)/(\d+)\)[ \n]")


def nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def bodies(pieces: list[str]) -> list[str]:
    """The pieces without their "(i/N) " prefix, checking the numbering on the way."""
    if len(pieces) <= 1:
        return pieces
    out = []
    for i, piece in enumerate(pieces, 1):
        m = NUMBER.match(piece)
        assert m is not None and (int(m[1]), int(m[2])) == (i, len(pieces)), piece[:20]
        out.append(piece[m.end() :])
    return out


def squash(text: str) -> str:
    return "".join(text.split())


def chinese_answer(target_bytes: int) -> str:
    """A deterministic one-paragraph Chinese answer of about `target_bytes` bytes (short sentences)."""
    sentences: list[str] = []
    i = 0
    while nbytes("".join(sentences)) < target_bytes:
        i += 1
        sentences.append(f"第{i}点，消息需要按字节分段发送。" if i % 3 else f"这是第{i}句，内容保持完整！")
    return "".join(sentences)


# --- splitting -------------------------------------------------------------------------------------


def test_six_kilobyte_chinese_answer_becomes_three_numbered_pieces_cut_at_sentence_ends() -> None:
    text = chinese_answer(6000)
    assert 6000 <= nbytes(text) < 6060
    pieces = split_utf8(text)
    assert len(pieces) == 3
    assert all(nbytes(p) <= 2048 for p in pieces)
    assert [p[:6] for p in pieces] == ["(1/3) ", "(2/3) ", "(3/3) "]
    parts = bodies(pieces)
    assert squash("".join(parts)) == squash(text)
    assert all(part[-1] in "。！" for part in parts), "every cut is at a sentence end, never at a comma"


def test_text_that_fits_is_returned_alone_and_unnumbered() -> None:
    assert split_utf8("你好，世界。") == ["你好，世界。"]
    exact = "中" * (2048 // 3) + "ab"
    assert nbytes(exact) == 2048
    assert split_utf8(exact) == [exact]
    assert split_utf8("\n\n  hello  \n\n") == ["  hello"], "blank lines go, the first line keeps its indent"
    assert split_utf8("") == []
    assert split_utf8(" \n\t\n ") == []


def test_limit_below_64_is_refused() -> None:
    with pytest.raises(ValueError, match="64"):
        split_utf8("x", 63)
    with pytest.raises(ValueError, match="64"):
        shape_text("x", 10)
    assert split_utf8("x", 64) == ["x"]


def test_paragraph_boundary_beats_a_later_sentence_end() -> None:
    first = "甲" * 400 + "。"  # 1203 bytes: more than half of the 2048-byte piece
    text = first + "\n\n" + "乙乙乙。" * 200
    parts = bodies(split_utf8(text))
    assert parts[0] == first


def test_line_end_beats_sentence_and_sentence_beats_clause() -> None:
    lines = "\n".join("行" * 30 + "。" + "字" * 10 for _ in range(40))
    parts = bodies(split_utf8(lines, 300))
    assert all(p.endswith("字" * 10) for p in parts[:-1]), "cut at line ends, not at the 。 inside lines"
    clauses = ("词" * 20 + "，") * 10 + "完。" + ("句" * 20 + "，") * 30  # 。 at 60 % of the first piece
    parts = bodies(split_utf8(clauses, 1024))
    assert parts[0].endswith("完。")
    assert all(p.endswith("，") for p in parts[1:-1]), "no sentence end left: clauses next"


def test_ascii_sentence_end_needs_a_following_space_or_cjk() -> None:
    text = ("Version 3.14 is out. " * 20) + ("pi=3.14159" * 10)
    parts = bodies(split_utf8(text, 200))
    assert all(p.endswith("out.") for p in parts[:-1] if "pi=" not in p)
    assert squash("".join(parts)) == squash(text)


@pytest.mark.parametrize(
    "cluster",
    [
        "👨\u200d👩\u200d👧\u200d👦",  # family: ZWJ sequence of 7 code points, 25 bytes
        "🇨🇳",  # flag: a pair of regional indicators
        "👍🏽",  # skin-tone modifier
        "1\ufe0f\u20e3",  # keycap
        "é\u0301",  # combining mark
        "😀",  # plain 4-byte emoji
        "𠀀",  # 4-byte CJK extension B
    ],
)
def test_grapheme_clusters_and_four_byte_characters_are_never_split(cluster: str) -> None:
    text = cluster * 800
    for limit in (64, 65, 77, 100, 2048):
        parts = bodies(split_utf8(text, limit))
        assert len(parts) > 1
        for part in parts:
            assert part and len(part) % len(cluster) == 0 and part == cluster * (len(part) // len(cluster))
        assert "".join(parts) == text


def test_a_cluster_longer_than_a_piece_is_still_cut_within_the_limit() -> None:
    zalgo = "e" + "\u0301" * 200
    pieces = split_utf8(zalgo, 64)
    assert all(nbytes(p) <= 64 for p in pieces)
    assert "".join(bodies(pieces)) == zalgo


def test_code_block_lines_are_never_cut() -> None:
    code = [f"    result_{i} = compute(alpha, beta, gamma)  # 第{i}行，说明。" for i in range(60)]
    text = "说明如下。\n\n```python\n" + "\n".join(code) + "\n```\n\n" + "结论。" * 50
    pieces = split_utf8(text, 512)
    assert all(nbytes(p) <= 512 for p in pieces)
    lines = {line for part in bodies(pieces) for line in part.split("\n")}
    assert all(line in lines for line in code), "every code line survives whole, indentation included"


def test_a_code_line_longer_than_the_limit_is_cut_at_characters() -> None:
    long_line = "x" * 300
    text = "```\n" + long_line + "\nshort()\n```"
    pieces = split_utf8(text, 100)
    assert all(nbytes(p) <= 100 for p in pieces)
    assert squash("".join(bodies(pieces))) == squash(text)
    assert "short()" in {line for part in bodies(pieces) for line in part.split("\n")}


def test_numbering_width_grows_with_the_count() -> None:
    text = "字" * 4000  # no cut points at all: 12000 bytes
    pieces = split_utf8(text, 64)
    assert len(pieces) >= 100
    assert pieces[0].startswith(f"(1/{len(pieces)}) ")
    assert all(nbytes(p) <= 64 for p in pieces)
    assert "".join(bodies(pieces)) == text


def test_numbering_can_be_turned_off() -> None:
    pieces = split_utf8("字" * 1000, 200, number=False)
    assert len(pieces) > 1 and not any(NUMBER.match(p) for p in pieces)
    assert "".join(pieces) == "字" * 1000
    assert all(nbytes(p) <= 200 for p in pieces)


def test_lone_surrogates_do_not_crash_the_splitter() -> None:
    pieces = split_utf8("\ud800" + "a " * 100, 64)
    assert all(nbytes(p) <= 64 for p in pieces)


def test_large_adversarial_inputs_stay_fast() -> None:
    inputs = [
        "*" * 100_000,
        "*a" * 50_000,
        "[" * 100_000,
        "`a``" * 25_000,
        "." * 100_000,
        "<http://" * 12_500,
        "\\" * 100_000,
        "_a " * 33_000,
        "e" + "\u0301" * 100_000,
        "\U0001f1e8" * 100_000,
        "|a|b|\n|-|-|\n" * 8_000,
        "> " * 50_000,
        "```\n" * 25_000,
    ]
    started = time.perf_counter()
    for text in inputs:
        for markdown in (False, True):
            assert all(nbytes(p) <= 2048 for p in shape_text(text, markdown=markdown))
    assert time.perf_counter() - started < 20, "something went quadratic"


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=3000), limit=st.integers(64, 400), number=st.booleans())
def test_any_text_splits_into_pieces_within_the_limit(text: str, limit: int, number: bool) -> None:
    pieces = split_utf8(text, limit, number=number)
    assert all(p.strip() and nbytes(p) <= limit for p in pieces)
    parts = bodies(pieces) if number else pieces
    assert squash("".join(parts)) == squash(text)
    assert split_utf8(text, limit, number=number) == pieces, "deterministic"


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(st.characters(exclude_categories=("Zs", "Zl", "Zp", "Cc", "Cs")), min_size=50, max_size=2000),
    limit=st.integers(64, 200),
)
def test_long_lines_without_spaces_split_within_the_limit(text: str, limit: int) -> None:
    pieces = split_utf8(text, limit)
    assert all(p and nbytes(p) <= limit for p in pieces)
    assert "".join(bodies(pieces)) == text


# --- shape_text ------------------------------------------------------------------------------------


def test_shape_text_converts_markdown_then_splits() -> None:
    md = "# 标题\n\n" + "这是**重点**内容。" * 300
    pieces = shape_text(md)
    assert len(pieces) > 1 and all(nbytes(p) <= 2048 for p in pieces)
    assert "**" not in "".join(pieces) and "#" not in "".join(pieces)
    assert squash("".join(bodies(pieces))) == squash(markdown_to_plain(md))


def test_shape_text_keeps_converted_code_lines_whole() -> None:
    code = [f"value_{i} = items[{i}] * factor  # 注释，第{i}行。" for i in range(80)]
    md = "代码：\n\n```python\n" + "\n".join(code) + "\n```\n"
    lines = {line for part in bodies(shape_text(md, 400)) for line in part.split("\n")}
    assert all(line in lines for line in code)


def test_markdown_pieces_close_and_reopen_a_cut_code_block() -> None:
    code = [f"print('第{i}行')" for i in range(120)]
    md = "示例：\n\n```python title=demo\n" + "\n".join(code) + "\n```\n\n完。"
    pieces = shape_text(md, 400, markdown=True)
    assert len(pieces) > 2 and all(nbytes(p) <= 400 for p in pieces)
    assert pieces[0].startswith(f"(1/{len(pieces)})\n"), "the number sits on its own line in markdown"
    parts = bodies(pieces)
    for part in parts[:-1]:
        assert part.endswith("\n```")
    for part in parts[1:-1]:
        assert part.startswith("```python title=demo\n")
    assert parts[-1].endswith("```\n\n完。")
    lines = [line for part in parts for line in part.split("\n")]
    assert [line for line in lines if line.startswith("print")] == code, "no code line lost, cut or duplicated"


def test_markdown_mode_leaves_text_without_fences_alone() -> None:
    md = "## 小结\n\n- **一**：说明。\n" * 100
    parts = bodies(shape_text(md, 512, markdown=True))
    assert "```" not in "".join(parts)
    assert squash("".join(parts)) == squash(md)


paragraphs = st.text(st.sampled_from("中文字段落，。！abc xyz_*#>-"), min_size=1, max_size=120)
code_lines = st.lists(st.text(st.sampled_from("abc=()_ 中 {}#.+"), max_size=60), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(
    blocks=st.lists(st.one_of(paragraphs, st.tuples(st.sampled_from(["", "py", "json x=1"]), code_lines)), max_size=12),
    limit=st.integers(64, 600),
)
def test_markdown_pieces_always_have_balanced_fences(blocks: list[str | tuple[str, list[str]]], limit: int) -> None:
    chunks = [b if isinstance(b, str) else "```" + b[0] + "\n" + "\n".join(b[1]) + "\n```" for b in blocks]
    md = "\n\n".join(chunks)
    pieces = shape_text(md, limit, markdown=True)
    assert all(p.strip() and nbytes(p) <= limit for p in pieces)
    for part in bodies(pieces):
        lines = part.split("\n")
        assert all(f.close < len(lines) for f in find_fences(lines)), part


@settings(max_examples=200, deadline=None)
@given(md=st.text(st.sampled_from("ab 中。*_~`#>|-![]()<>:/\\\n1.+h"), max_size=400), limit=st.integers(64, 300))
def test_shape_text_is_total_on_markdown_soup(md: str, limit: int) -> None:
    for markdown in (False, True):
        assert all(p.strip() and nbytes(p) <= limit for p in shape_text(md, limit, markdown=markdown))


# --- markdown → plain ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("md", "plain"),
    [
        ("# 标题\n正文", "标题\n\n正文"),
        ("前文\n## 小节 ##\n后文", "前文\n\n小节\n\n后文"),
        ("# C#", "C#"),
        ("Title\n=====\nbody", "Title\n\nbody"),
        ("#话题# 不是标题", "#话题# 不是标题"),
        ("**粗** __粗__ *斜* _斜_ ~~删~~ `代码`", "粗 粗 斜 斜 删 代码"),
        ("***粗斜***", "粗斜"),
        ("这是**重点**内容，**注意：**这里", "这是重点内容，注意：这里"),
        ("snake_case_words and __init__ here", "snake_case_words and init here"),
        ("2*3*4 = 24, x**2, a * b * c", "2*3*4 = 24, x**2, a * b * c"),
        ("f(*args, **kwargs)", "f(*args, **kwargs)"),
        ("3~5天", "3~5天"),
        ("`a*b*c` and `` a`b ``", "a*b*c and a`b"),
        ("\\*字面\\* \\_x\\_", "*字面* _x_"),
        ("见[文档](https://ex.com/a_b_c)。", "见文档 (https://ex.com/a_b_c)。"),
        ('[**加粗链接**](http://u "标题")', "加粗链接 (http://u)"),
        ("[https://ex.com](https://ex.com)", "https://ex.com"),
        ("<https://ex.com/x_y_> and <me@ex.com>", "https://ex.com/x_y_ and me@ex.com"),
        ("https://ex.com/_private_/ ok", "https://ex.com/_private_/ ok"),
        ("![架构图](https://ex.com/a.png)", "[图片: 架构图] https://ex.com/a.png"),
        ("![](https://ex.com/a.png)", "[图片] https://ex.com/a.png"),
        ("- 一\n  - 二\n    * 三\n+ 四", "• 一\n  • 二\n    • 三\n• 四"),
        ("- [ ] 待办\n- [x] 完成", "☐ 待办\n☑ 完成"),
        ("1. 一\n2) **二**\n10. 十", "1. 一\n2) 二\n10. 十"),
        ("> 引用 **重点**\n> > 嵌套\n>\n> - 项", "> 引用 重点\n> > 嵌套\n>\n> • 项"),
        ("| 名称 | 说明 |\n|:---|---:|\n| a | **b** |\n| c \\| d | `e` |", "名称 | 说明\na | b\nc | d | e"),
        ("a | b 不是表格", "a | b 不是表格"),
        ("上\n\n---\n\n下", f"上\n\n{RULE}\n\n下"),
        ("* * *", RULE),
        ("说明：\n```python\nx = a_b * 2  # **不处理**\n\n\n\n    缩进保留\n```\n之后", None),
        ("```\n未闭合的代码 **x**", "未闭合的代码 **x**"),
        ("```x``` 不是代码块", "x 不是代码块"),
        ("~~~\n`code`\n~~~", "`code`"),
        ("a\n\n\n\n\nb", "a\n\n\nb"),
        ("a\r\nb", "a\nb"),
        ("<b>html</b> 原样", "<b>html</b> 原样"),
        ("空\x00字符", "空\ufffd字符"),
    ],
)
def test_markdown_to_plain(md: str, plain: str | None) -> None:
    if plain is None:  # fenced code: contents verbatim, blank lines inside kept, blank line around
        plain = "说明：\n\nx = a_b * 2  # **不处理**\n\n\n\n    缩进保留\n\n之后"
    assert markdown_to_plain(md) == plain


plain_chinese = st.lists(
    st.one_of(
        st.just(""),
        st.text(st.sampled_from("中文汉字测试，。！？；：、“”‘’（）《》【】「」…—～·%¥ 123abcXYZ"), min_size=1).map(
            lambda s: s.lstrip()
        ),
    ),
    max_size=20,
).map("\n".join)


@settings(max_examples=200, deadline=None)
@given(text=plain_chinese)
def test_plain_chinese_text_comes_back_unchanged(text: str) -> None:
    lines = text.split("\n")
    if not any(lines[i : i + 3] == ["", "", ""] for i in range(len(lines))):  # the one thing that is collapsed
        assert markdown_to_plain(text) == text
    once = markdown_to_plain(text)
    assert markdown_to_plain(once) == once


@settings(max_examples=200, deadline=None)
@given(md=st.text(max_size=500))
def test_markdown_to_plain_is_total(md: str) -> None:
    assert isinstance(markdown_to_plain(md), str)
    assert isinstance(markdown_to_plain(md.replace("a", "**").replace("b", "\n```\n")), str)


def test_converted_markdown_is_stable_on_a_second_pass() -> None:
    md = (
        "# 部署指南\n\n1. 安装**依赖**\n2. 配置 `config.yaml`\n\n- 见[文档](https://ex.com/a_b)\n"
        "> 注意：*不要*泄露密钥\n\n| 项 | 值 |\n|--|--|\n| 端口 | 8080 |\n\n---\n\n```bash\nmake run\n```\n"
    )
    once = markdown_to_plain(md)
    assert markdown_to_plain(once) == once
