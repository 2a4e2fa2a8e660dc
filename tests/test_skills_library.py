"""Skill library: SKILL.md parsing and validation, static checks, immutable versions, crash safety, git, seeds."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from agent_core.skills import files as skill_files
from agent_core.skills.files import hash_folder, static_problems
from agent_core.skills.library import SkillChange, SkillLibrary, SkillNotFound
from agent_core.skills.parse import SkillError, parse_meta, read_skill_dir, split_front_matter
from agent_core.skills.seeds import SEED_AUTHOR, ensure_seeds, seed_folders
from agent_core.skills.testing import SubprocessRunner
from agent_core.skills.verify import verify_skill

REPO = Path(__file__).resolve().parents[1]


def make_skill(folder: Path, name: str = "demo-skill", body: str = "Say hello.", **front: Any) -> Path:
    """A minimal skill folder; extra keyword arguments become front matter lines (YAML flow values)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"name: {name}", "description: Greets people. Use when someone says hi."]
    lines += [f"{key.replace('_', '-') if key == 'allowed_tools' else key}: {value}" for key, value in front.items()]
    (folder / "SKILL.md").write_text("---\n" + "\n".join(lines) + "\n---\n" + body + "\n", encoding="utf-8")
    return folder


# ----------------------------------------------------------------------------- parsing


BAD_FRONT_MATTER = [
    ("name: x\n", "must start with a '---'"),
    ("---\nname: demo\n", "not closed"),
    ("---\nname: [unclosed\n---\n", "not valid YAML"),
    ("---\n- a list\n---\n", "must be a mapping"),
    ("---\ndescription: d\n---\n", "name: required"),
    ("---\nname: Demo\ndescription: d\n---\n", "lowercase letters"),
    ("---\nname: demo--x\ndescription: d\n---\n", "single hyphens"),
    ("---\nname: -demo\ndescription: d\n---\n", "not starting or ending"),
    ("---\nname: " + "a" * 65 + "\ndescription: d\n---\n", "at most 64"),
    ("---\nname: demo\n---\n", "description: required"),
    ("---\nname: demo\ndescription: '" + "d" * 1025 + "'\n---\n", "at most 1024"),
    ("---\nname: demo\ndescription: d\npermissions: [root]\n---\n", "not a known permission"),
    ("---\nname: demo\ndescription: d\npermissions: ['secrets:lower']\n---\n", "not a known permission"),
    ("---\nname: demo\ndescription: d\npermissions: {network: true}\n---\n", "expected a list of strings"),
    ("---\nname: demo\ndescription: d\naudience: [Admins!]\n---\n", "not a role name"),
    ("---\nname: demo\ndescription: d\nrequirements: httpx\n---\n", "list of pip requirement"),
    ("---\nname: demo\ndescription: d\nrequirements: ['-e git+https://x/y']\n---\n", "pip name"),
    ("---\nname: demo\ndescription: d\nrequirements: ['pkg @ https://evil/p.whl']\n---\n", "pip name"),
    ("---\nname: demo\ndescription: d\ninput_schema: [a]\n---\n", "JSON Schema object"),
    ("---\nname: demo\ndescription: d\ninput_schema: {type: array}\n---\n", "must be 'object'"),
    ("---\nname: demo\ndescription: d\ninput_schema: {required: x}\n---\n", "list of property names"),
    ("---\nname: demo\ndescription: d\nversion: [1]\n---\n", "version: expected a string"),
    ("---\nname: demo\ndescription: d\ntags: ['has space']\n---\n", "is not a tag"),
    ("---\nname: demo\ndescription: d\ncompatibility: '" + "c" * 501 + "'\n---\n", "compatibility"),
    ("---\nname: demo\ndescription: d\nmetadata: text\n---\n", "metadata: expected a mapping"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FRONT_MATTER)
def test_bad_front_matter_is_refused_with_a_clear_reason(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "SKILL.md").write_text(text, encoding="utf-8")
    with pytest.raises(SkillError) as err:
        read_skill_dir(tmp_path)
    assert message in str(err.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SkillError) as err:
        parse_meta({"name": "Bad_Name", "permissions": ["root"], "audience": ["X"]})
    assert len(err.value.problems) == 4  # name, description, permission, audience


def test_valid_front_matter_with_our_keys() -> None:
    data, body = split_front_matter(
        "\ufeff---\r\nname: ops-tool\r\ndescription: Does ops.\r\nversion: 1.10\r\ntags: a, b\r\n"
        "permissions: [network, shell, fs-write, 'secrets:GITHUB_TOKEN']\r\naudience: [admin]\r\n"
        "requirements: ['httpx>=0.27,<1', 'rich[jupyter]==13.7.1', \"tomli; python_version < '3.11'\"]\r\n"
        "input_schema: {type: object, properties: {q: {type: string}}, required: [q]}\r\n---\r\n\r\n# Body\r\n"
    )
    meta = parse_meta(data)
    assert body == "# Body"
    assert meta.version == "1.1"  # YAML reads 1.10 as a float; quote versions to keep them exact
    assert meta.tags == ("a", "b")
    assert meta.permissions[-1] == "secrets:GITHUB_TOKEN" and meta.audience == ("admin",)
    assert len(meta.requirements) == 3 and meta.input_schema is not None and meta.extra == {}
    assert meta.card().name == "ops-tool"


PUBLIC_SKILL = """\
---
name: pdf-processing
description: Extract text and tables from PDF files, fill forms, merge documents. Use when working with PDFs.
license: Apache-2.0
compatibility: Requires python3 and network access
allowed-tools: Bash(python3:*) Read
metadata:
  author: example-org
  version: "2.1"
x-custom: {anything: [1, 2]}
---

# PDF processing

Run `scripts/extract.py` and read [the reference](references/REFERENCE.md).
"""


def public_skill(folder: Path) -> Path:
    """A skill written for the public Agent Skills convention, with every optional folder."""
    (folder / "scripts").mkdir(parents=True)
    (folder / "references").mkdir()
    (folder / "assets").mkdir()
    (folder / "SKILL.md").write_text(PUBLIC_SKILL, encoding="utf-8")
    (folder / "scripts" / "extract.py").write_text("print('{}')\n", encoding="utf-8")
    (folder / "scripts" / "extract.py").chmod(0o755)
    (folder / "references" / "REFERENCE.md").write_text("details\n", encoding="utf-8")
    (folder / "assets" / "logo.bin").write_bytes(bytes(range(256)))
    return folder


def test_public_convention_skill_installs_unchanged(tmp_path: Path) -> None:
    src = public_skill(tmp_path / "src")
    library = SkillLibrary(tmp_path / "lib")
    skill = library.install(src, author="alice", reason="import")
    assert skill.meta.name == "pdf-processing" and skill.meta.version == "2.1"
    assert skill.meta.extra["license"] == "Apache-2.0"
    assert skill.meta.extra["allowed-tools"] == "Bash(python3:*) Read"
    assert skill.meta.extra["metadata"] == {"author": "example-org", "version": "2.1"}
    assert skill.meta.extra["x-custom"] == {"anything": [1, 2]}
    for path in src.rglob("*"):
        if path.is_file():
            assert (skill.path / path.relative_to(src)).read_bytes() == path.read_bytes()
    assert os.access(skill.path / "scripts" / "extract.py", os.X_OK)
    assert skill.content_hash == hash_folder(src)
    assert library.list()[0].extra["license"] == "Apache-2.0"


# ----------------------------------------------------------------------------- static checks


def test_symlinks_are_refused(tmp_path: Path) -> None:
    src = make_skill(tmp_path / "s")
    (src / "leak").symlink_to("/etc/passwd")
    (src / "dir-link").symlink_to(tmp_path)
    problems = static_problems(src)
    assert any("leak: symlinks" in p for p in problems) and any("dir-link: symlinks" in p for p in problems)
    with pytest.raises(SkillError, match="symlinks"):
        SkillLibrary(tmp_path / "lib").install(src, author="a")


def test_referenced_scripts_must_exist_and_stay_inside(tmp_path: Path) -> None:
    src = make_skill(tmp_path / "s", body="Run `scripts/missing.py`, then scripts/../../etc/x.sh.")
    problems = static_problems(src)
    assert any("scripts/missing.py, which does not exist" in p for p in problems)
    assert any("leaves the skill folder" in p for p in problems)


def test_size_and_file_count_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_skill(tmp_path / "s")
    (src / "assets").mkdir()
    for i in range(4):
        (src / "assets" / f"{i}.bin").write_bytes(b"x" * 100)
    monkeypatch.setattr(skill_files, "MAX_FILES", 3)
    monkeypatch.setattr(skill_files, "MAX_TOTAL_BYTES", 300)
    problems = static_problems(src)
    assert any("at most 3 allowed" in p for p in problems) and any("MB allowed" in p for p in problems)


def test_vcs_and_cache_files_are_not_part_of_a_skill(tmp_path: Path) -> None:
    src = make_skill(tmp_path / "s")
    before = hash_folder(src)
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref\n")
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert hash_folder(src) == before


# ----------------------------------------------------------------------------- versions


def test_install_change_rollback_activate(tmp_path: Path) -> None:
    library = SkillLibrary(tmp_path / "lib")
    src = make_skill(tmp_path / "s", version="'1.0'")
    v1 = library.install(src, author="alice", reason="first")
    make_skill(src, version="'1.0'", body="Say hello politely.")
    v2 = library.install(src, author="bob", reason="politer")
    assert v1.content_hash != v2.content_hash and v1.path.is_dir() and v2.path.is_dir()
    history = library.history("demo-skill")
    assert [h.version for h in history] == ["1.0", f"1.0+{v2.content_hash[:8]}"]  # a reused label is made unique
    assert [h.author for h in history] == ["alice", "bob"] and history[1].active
    assert library.get("demo-skill").instructions == "Say hello politely."
    assert library.install(src, author="carol").content_hash == v2.content_hash  # identical content: no new version
    assert len(library.history("demo-skill")) == 2

    assert library.rollback("demo-skill", author="ops").content_hash == v1.content_hash
    assert library.get("demo-skill").instructions == "Say hello."
    with pytest.raises(SkillNotFound, match="oldest version"):
        library.rollback("demo-skill", author="ops")
    assert library.activate("demo-skill", author="ops").content_hash == v2.content_hash
    assert library.rollback("demo-skill", "1.0", author="ops").content_hash == v1.content_hash
    assert library.activate("demo-skill", v2.content_hash[:10], author="ops").content_hash == v2.content_hash
    assert library.version("demo-skill", "1.0").instructions == "Say hello."
    with pytest.raises(SkillNotFound, match="no version"):
        library.rollback("demo-skill", "9.9", author="ops")
    # Published files are read-only: a version cannot be edited in place by accident.
    assert not (v1.path / "SKILL.md").stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def test_remove_keeps_history_and_activate_restores(tmp_path: Path) -> None:
    library = SkillLibrary(tmp_path / "lib")
    library.install(make_skill(tmp_path / "s"), author="a")
    library.remove("demo-skill", author="ops", reason="misbehaves")
    assert library.list() == [] and "demo-skill" in library.names()
    with pytest.raises(SkillNotFound):
        library.get("demo-skill")
    with pytest.raises(SkillNotFound):
        library.remove("demo-skill", author="ops")
    with pytest.raises(SkillNotFound, match="not active"):
        library.rollback("demo-skill", author="ops")
    assert len(library.history("demo-skill")) == 1
    assert library.activate("demo-skill", author="ops").meta.name == "demo-skill"
    with pytest.raises(SkillNotFound):
        library.activate("never-installed", author="ops")


def test_listeners_see_every_committed_change(tmp_path: Path) -> None:
    library = SkillLibrary(tmp_path / "lib")
    seen: list[SkillChange] = []

    def broken(change: SkillChange) -> None:
        raise RuntimeError("listener bug")

    library.subscribe(broken)
    unsubscribe = library.subscribe(seen.append)
    src = make_skill(tmp_path / "s", tags="[greeting]")
    library.install(src, author="a")
    make_skill(src, tags="[greeting, hello]")
    library.install(src, author="a")
    library.rollback("demo-skill", author="a")
    library.remove("demo-skill", author="a")
    assert [c.action for c in seen] == ["install", "install", "rollback", "remove"]
    assert seen[0].card is not None and seen[0].card.tags == ("greeting",) and seen[-1].card is None
    assert [c.revision for c in seen] == sorted(c.revision for c in seen) and library.revision() == seen[-1].revision
    unsubscribe()
    library.activate("demo-skill", author="a")
    assert len(seen) == 4


def test_readers_see_consistent_versions_during_concurrent_installs(tmp_path: Path) -> None:
    library = SkillLibrary(tmp_path / "lib")
    sources_ = [make_skill(tmp_path / f"s{i}", version=f"'{i}.0'", body=f"body {i}") for i in range(3)]
    library.install(sources_[0], author="a")
    stop = threading.Event()
    errors: list[str] = []

    def reader() -> None:
        reader_lib = SkillLibrary(tmp_path / "lib")  # another handle on the same root, like another process
        while not stop.is_set():
            skill = reader_lib.get("demo-skill")
            if skill.instructions != f"body {skill.meta.version.split('.')[0]}":
                errors.append(f"mixed version: {skill.meta.version} / {skill.instructions}")
            if hash_folder(skill.path) != skill.content_hash:
                errors.append(f"half-written folder {skill.path}")

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        for round_ in range(15):
            library.install(sources_[round_ % 3], author="writer")
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert errors == []
    assert len(library.history("demo-skill")) == 3


CRASH_CHILD = """
import os, sys
from pathlib import Path
from agent_core.skills import index
from agent_core.skills.library import SkillLibrary
library = SkillLibrary(Path(sys.argv[1]))
if sys.argv[3] == "before-rename":
    os.rename = lambda *a, **k: os._exit(9)
else:
    index.add_version = lambda *a, **k: os._exit(9)
library.install(Path(sys.argv[2]), author="crash")
"""


@pytest.mark.parametrize("point", ["before-rename", "before-commit"])
def test_crash_mid_install_leaves_no_half_skill(tmp_path: Path, point: str) -> None:
    root = tmp_path / "lib"
    SkillLibrary(root).install(make_skill(tmp_path / "old", body="old"), author="a")
    src = make_skill(tmp_path / "new", body="new")
    child = subprocess.run(
        [sys.executable, "-c", CRASH_CHILD, str(root), str(src), point], cwd=REPO, capture_output=True, timeout=60
    )
    assert child.returncode == 9, child.stderr
    library = SkillLibrary(root)  # reopening sweeps the dead process's staging folder
    assert list((root / "tmp").iterdir()) == []
    assert library.get("demo-skill").instructions == "old" and len(library.history("demo-skill")) == 1
    published = sorted(p.name for p in (root / "versions" / "demo-skill").iterdir())
    assert len(published) == (1 if point == "before-rename" else 2)  # a renamed-but-unrecorded folder is inert
    assert library.install(src, author="a").instructions == "new"
    assert len(library.history("demo-skill")) == 2


# ----------------------------------------------------------------------------- git


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_install_from_a_local_git_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_skill(repo / "skills" / "demo-skill")
    make_skill(repo / "skills" / "other-skill", name="other-skill")
    _git("init", "-q", cwd=repo)
    _git("add", "-A", cwd=repo)
    _git("commit", "-q", "-m", "skills", cwd=repo)
    library = SkillLibrary(tmp_path / "lib")
    with pytest.raises(SkillError, match="several skills"):
        library.install(f"file://{repo}", author="a")
    skill = library.install(f"file://{repo}#skills/other-skill", author="a")
    assert skill.meta.name == "other-skill" and not (skill.path / ".git").exists()
    assert library.history("other-skill")[0].reason == f"installed from file://{repo}#skills/other-skill"
    with pytest.raises(SkillError, match="git clone failed"):
        library.install(f"file://{tmp_path}/missing.git", author="a")
    with pytest.raises(SkillError, match="leaves the repository"):
        library.install(f"file://{repo}#../..", author="a")


def test_git_url_without_git_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(SkillError, match="needs the `git` program"):
        SkillLibrary(tmp_path / "lib").install("https://example.com/skills.git", author="a")


# ----------------------------------------------------------------------------- seeds and verify


def test_seeds_install_once_and_respect_removal(tmp_path: Path) -> None:
    library = SkillLibrary(tmp_path / "lib")
    names = ensure_seeds(library)
    assert sorted(names) == ["fetch-url-summary", "host-readonly-shell", "http-health-check", "skill-authoring-guide"]
    assert ensure_seeds(library) == []
    library.remove("http-health-check", author="ops")
    assert ensure_seeds(library) == [] and "http-health-check" not in {m.name for m in library.list()}
    assert all(v.author == SEED_AUTHOR for v in library.history("fetch-url-summary"))
    assert library.get("host-readonly-shell").meta.audience == ("admin",)


@pytest.mark.parametrize("folder", seed_folders(), ids=lambda p: p.name)
def test_seed_skills_pass_verify(folder: Path) -> None:
    report = verify_skill(folder, SubprocessRunner())
    assert report.ok, "\n".join(report.lines())
    assert report.cases or not (folder / "scripts").exists()


def test_verify_reports_failing_cases_and_bad_tests(tmp_path: Path) -> None:
    src = make_skill(tmp_path / "s", body="Run scripts/echo.py.")
    (src / "scripts").mkdir()
    (src / "scripts" / "echo.py").write_text("import sys, json\nprint(json.dumps(json.load(sys.stdin)))\n")
    (src / "tests").mkdir()
    cases = """
    - name: echoes
      input: {a: [1, {b: "x"}]}
      expect: {json: {"$.a[1].b": "x"}, contains: '"a"'}
    - name: wrong
      input: {a: 1}
      expect: {json: {$.a: 2, $.missing: 1}, exit_code: 3, bogus: 1}
    """
    (src / "tests" / "cases.yaml").write_text(textwrap.dedent(cases))
    report = verify_skill(src, SubprocessRunner())
    assert not report.ok and report.cases[0].ok
    failures = " | ".join(report.cases[1].failures)
    assert "$.a is 1, expected 2" in failures and "no key 'missing'" in failures
    assert "exit code 0, expected 3" in failures and "unknown expectation 'bogus'" in failures
    (src / "tests" / "cases.yaml").write_text("cases: {not: a list}\n")
    assert "expected a list of cases" in verify_skill(src, SubprocessRunner()).problems[0]


def test_subprocess_runner_scrubs_env_and_enforces_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_skill(tmp_path / "s")
    (src / "scripts").mkdir()
    (src / "scripts" / "env.py").write_text("import os, json\nprint(json.dumps(sorted(os.environ)))\n")
    (src / "scripts" / "sleep.sh").write_text("sleep 30 & sleep 30\n")
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    runner = SubprocessRunner()
    code, out, _ = runner.run(src, "scripts/env.py", "{}", 10)
    assert code == 0 and "SECRET_TOKEN" not in out and "SKILL_DIR" in out
    code, _, err = runner.run(src, "scripts/sleep.sh", "{}", 0.5)
    assert code == 124 and "timed out" in err
    with pytest.raises(ValueError, match="inside the skill"):
        runner.run(src, "../s/scripts/env.py", "{}", 5)


def test_network_seeds_against_a_local_http_server(tmp_path: Path) -> None:
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = 200 if self.path == "/" else 503
            body = b"<html><head><title>Status page</title></head><body><p>All good</p></body></html>"
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    seeds = {p.name: p for p in seed_folders()}
    runner = SubprocessRunner()
    try:
        code, out, err = runner.run(seeds["fetch-url-summary"], "scripts/fetch.py", json.dumps({"url": base + "/"}), 20)
        assert code == 0, err
        page = json.loads(out)
        assert page["status"] == 200 and page["title"] == "Status page" and page["text"] == "All good"
        args = json.dumps({"endpoints": [base + "/", base + "/down"]})
        code, out, err = runner.run(seeds["http-health-check"], "scripts/check.py", args, 20)
        assert code == 0, err
        rows = json.loads(out)["results"]
        assert rows[0]["ok"] and rows[0]["status"] == 200 and rows[0]["latency_ms"] >= 0
        assert rows[1] == {**rows[1], "ok": False, "status": 503, "error": "HTTP 503", "tls_days_left": None}
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
