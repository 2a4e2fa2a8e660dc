"""Dependency rules that keep the core platform-free (checked on the import graph, not by convention)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ("gateway", "agent_core", "sessions")
PLATFORM_WORDS = re.compile(r"feishu|lark|dingtalk|wecom|wechat|weixin", re.IGNORECASE)


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_core_never_imports_a_platform_adapter() -> None:
    for package in CORE:
        for path in modules(package):
            for name in imports_of(path):
                if name.startswith("adapters."):
                    assert name == "adapters.base" or (path.name in ("run.py",) and name == "adapters.console"), (
                        f"{path.relative_to(ROOT)} imports {name}"
                    )


def test_agent_core_depends_on_nothing_internal() -> None:
    for path in modules("agent_core"):
        for name in imports_of(path):
            top = name.split(".")[0]
            assert top not in ("gateway", "sessions", "adapters"), f"{path.relative_to(ROOT)} imports {name}"


# Shared by several platform packages; never import a platform package themselves.
SHARED_ADAPTER_MODULES = {"base", "httpio", "secrets", "tokens"}
# The WeChat family's crypto and API client; its text shaping (markdown splitting) also serves Feishu.
SHARED_ADAPTER_PACKAGES = {"wxcommon": {"wechat", "wecom", "feishu", "dingtalk"}}  # text shaping is shared


def test_adapters_do_not_import_each_other_or_the_runtime() -> None:
    for package_dir in sorted(p for p in (ROOT / "adapters").iterdir() if p.is_dir() and p.name != "__pycache__"):
        for path in package_dir.rglob("*.py"):
            for name in imports_of(path):
                parts = name.split(".")
                if parts[0] == "adapters" and len(parts) > 1 and parts[1] not in SHARED_ADAPTER_MODULES:
                    users = SHARED_ADAPTER_PACKAGES.get(parts[1], set())
                    assert parts[1] == package_dir.name or package_dir.name in users, (
                        f"{path.relative_to(ROOT)} imports {name}"
                    )
                if parts[0] == "gateway":
                    assert name in ("gateway.messages", "gateway.errors", "gateway.config"), (
                        f"{path.relative_to(ROOT)} reaches into the runtime via {name}"
                    )


def test_no_platform_words_in_the_core() -> None:
    for package in CORE:
        for path in modules(package):
            text = path.read_text(encoding="utf-8")
            assert not PLATFORM_WORDS.search(text), f"platform word in {path.relative_to(ROOT)}"


def test_cli_help_imports_nothing_heavy() -> None:
    code = (
        "import sys\nfrom gateway.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('litellm', 'aiohttp', 'pydantic', 'sqlite3') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
