"""Configuration: YAML + env precedence, exact key paths on errors, secrets never inline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.config import config_path, json_schema, load_settings
from gateway.errors import ConfigError
from gateway.run import print_schema


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "switchboard.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file() -> None:
    settings = load_settings(None)
    assert settings.server.port == 8080
    assert settings.adapters["webhook"]["enabled"] is True
    assert settings.llm.profiles["default"].api_key_env == "OPENAI_API_KEY"


def test_env_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "server:\n  port: 9000\n  host: 0.0.0.0\n")
    monkeypatch.setenv("SWITCHBOARD_SERVER__PORT", "9100")
    settings = load_settings(path)
    assert settings.server.port == 9100
    assert settings.server.host == "0.0.0.0"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server:\n  port: abc\n", "server.port"),
        ("servr:\n  port: 1\n", "servr"),
        ("llm:\n  profiles:\n    default:\n      model: openai/x\n      api_key: sk-inline\n", "api_key"),
        ("bus:\n  pending_mode: sometimes\n", "bus.pending_mode"),
        ("- just\n- a list\n", "top level"),
        ("server: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text))
    assert expected in str(err.value)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_config_path_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert config_path(None, {}) is None
    (tmp_path / "switchboard.yaml").write_text("{}")
    assert config_path(None, {}) == Path("switchboard.yaml")
    assert config_path(None, {"SWITCHBOARD_CONFIG": "/etc/x.yaml"}) == Path("/etc/x.yaml")
    assert config_path("mine.yaml", {"SWITCHBOARD_CONFIG": "/etc/x.yaml"}) == Path("mine.yaml")


def test_example_config_is_valid_and_complete() -> None:
    example = Path(__file__).resolve().parents[1] / "deploy" / "switchboard.example.yaml"
    settings = load_settings(example)
    top = json.loads(json_schema({}))["properties"]
    text = example.read_text()
    for section, schema in top.items():
        if section == "adapters":
            continue
        assert f"\n{section}:" in text
        sub = schema.get("properties") or {}
        if not sub and "$ref" in schema:
            ref = schema["$ref"].rsplit("/", 1)[-1]
            sub = json.loads(json_schema({}))["$defs"][ref]["properties"]
        for key in sub:
            assert f"{key}:" in text or f"{sub[key].get('alias', key)}:" in text, f"{section}.{key} undocumented"
    assert settings.adapters["webhook"]["enabled"] is True


def test_schema_includes_adapter_sections(capsys: pytest.CaptureFixture[str]) -> None:
    assert print_schema() == 0
    schema = json.loads(capsys.readouterr().out)
    adapters = schema["properties"]["adapters"]["properties"]
    assert {"console", "webhook"} <= set(adapters)


def test_config_option_works_before_and_after_the_subcommand() -> None:
    from gateway.cli import _parser

    parser = _parser()
    assert parser.parse_args(["serve", "--config", "a.yaml"]).config == "a.yaml"
    assert parser.parse_args(["--config", "b.yaml", "doctor"]).config == "b.yaml"
    assert parser.parse_args(["chat"]).config is None
