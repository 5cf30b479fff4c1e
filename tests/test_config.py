"""Configuration: every problem reported at once, secrets hidden, .env.example complete."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.config import Config, Secret, load_config, read_environment
from bot.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
VALID = {
    "SLACK_BOT_TOKEN": "xoxb-1-secret-bot-token",
    "SLACK_SIGNING_SECRET": "signing-secret-value",
    "CUSTOM_VISION_ENDPOINT": "https://demo.cognitiveservices.azure.com",
    "CUSTOM_VISION_TRAINING_KEY": "training-key-value",
}


def test_config_defaults_match_the_contract() -> None:
    config = load_config(VALID)
    assert config.slack_api_url == "https://slack.com/api/"
    assert config.custom_vision_tps == 10.0
    assert config.bot_command == "/cv"
    assert config.database == Path("./data/cvdsr.db")
    assert config.work_dir == Path("./data/work")
    assert config.approvers == ()
    assert config.approval_ttl_hours == 24.0
    assert config.required_approvals == 1
    assert config.allow_public_exports is False
    assert config.max_file_mb == 1000
    assert config.port == 3000
    assert config.socket_mode is False


def test_config_reports_every_problem_at_once() -> None:
    env = {
        "SLACK_BOT_TOKEN": "xoxp-user-token",
        "CUSTOM_VISION_ENDPOINT": "not a url",
        "CUSTOM_VISION_TPS": "fast",
        "BOT_APPROVERS": "U123ABC,alice",
        "BOT_REQUIRED_APPROVALS": "0",
        "BOT_ALLOW_PUBLIC_EXPORTS": "maybe",
        "PORT": "70000",
        "BOT_AUDIT_CHANNEL": "general",
    }
    with pytest.raises(ConfigError) as caught:
        load_config(env)
    problems = caught.value.problems
    assert [p.split(" ")[0].split("=")[0] for p in problems] == [
        "SLACK_BOT_TOKEN",
        "SLACK_SIGNING_SECRET",
        "CUSTOM_VISION_TRAINING_KEY",
        "CUSTOM_VISION_ENDPOINT",
        "CUSTOM_VISION_TPS",
        "BOT_APPROVERS",
        "BOT_AUDIT_CHANNEL",
        "BOT_REQUIRED_APPROVALS",
        "BOT_ALLOW_PUBLIC_EXPORTS",
        "PORT",
    ]
    assert "alice" in problems[5]
    assert str(caught.value).startswith("Configuration has 10 problem(s):")


def test_config_socket_mode_needs_no_signing_secret() -> None:
    env = {**VALID, "SLACK_SIGNING_SECRET": "", "SLACK_APP_TOKEN": "xapp-1-app-token"}
    assert load_config(env).socket_mode is True


def test_config_parses_lists_and_numbers() -> None:
    env = {
        **VALID,
        "BOT_APPROVERS": " U0AAA1 , S0GROUP1,U0AAA1",
        "BOT_ALLOWED_CHANNELS": "C0PRIV1,G0OLD1",
        "BOT_ALLOW_PUBLIC_EXPORTS": "TRUE",
        "BOT_MAX_FILE_MB": "5",
        "SLACK_API_URL": "http://127.0.0.1:9/api",
    }
    config = load_config(env)
    assert config.approvers == ("U0AAA1", "S0GROUP1")
    assert config.allowed_channels == ("C0PRIV1", "G0OLD1")
    assert config.allow_public_exports is True
    assert config.max_file_bytes == 5 * 1024 * 1024
    assert config.slack_api_url == "http://127.0.0.1:9/api/"


def test_config_never_shows_secrets() -> None:
    config = load_config(VALID)
    shown = repr(config) + str(config)
    for secret in config.secrets():
        assert secret not in shown
    assert repr(Secret("abc")) == "Secret('********')"
    assert set(config.secrets()) == {
        "xoxb-1-secret-bot-token",
        "signing-secret-value",
        "training-key-value",
    }


def test_config_offline_commands_need_no_credentials() -> None:
    assert load_config({}, serve=False) == Config()


def test_config_env_file_is_read_and_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("BOT_COMMAND=/gdpr\nPORT=4000\n", encoding="utf-8")
    monkeypatch.setenv("PORT", "5000")
    values = read_environment(env_file)
    assert values["BOT_COMMAND"] == "/gdpr"
    assert values["PORT"] == "5000"


def test_env_example_lists_every_variable_the_code_reads() -> None:
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    declared = re.findall(r"^([A-Z_]+)=", example, re.MULTILINE)
    source = (ROOT / "bot" / "config.py").read_text(encoding="utf-8")
    read = set(re.findall(r'r\.(?:text|parsed|ids)\(\s*"([A-Z_]+)"', source))
    assert read, "the pattern must find the variables"
    assert set(declared) == read
    assert len(declared) == len(set(declared))
    for name in declared:  # a one-line comment right above each variable
        before = example.split(f"\n{name}=")[0].rstrip().splitlines()[-1]
        assert before.startswith("# "), name


def test_readme_configuration_table_matches_env_example() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([A-Z_]+)` \|", section, re.MULTILINE)
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    declared = re.findall(r"^([A-Z_]+)=", example, re.MULTILINE)
    assert documented == declared
    defaults = dict(re.findall(r"^([A-Z_]+)=(.+)$", example, re.MULTILINE))
    for name, value in defaults.items():  # a default in .env.example is the README's default
        row = next(line for line in section.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"`{value}`" in row, name
