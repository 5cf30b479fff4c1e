"""Configuration: every problem reported at once, secrets hidden, .env.example complete."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.config import NUMBERS, Config, Resource, Secret, load_config, read_environment
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
        "CUSTOM_VISION_TPS",
        "CUSTOM_VISION_TRAINING_KEY",
        "CUSTOM_VISION_ENDPOINT",
        "BOT_APPROVERS",
        "BOT_AUDIT_CHANNEL",
        "BOT_REQUIRED_APPROVALS",
        "BOT_ALLOW_PUBLIC_EXPORTS",
        "PORT",
    ]
    assert "alice" in problems[5]
    assert str(caught.value).startswith("Configuration has 10 problems:")


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
    read = set(re.findall(r'r\.(?:text|parsed|ids|number|dates)\(\s*"([A-Z_]+)"', source))
    # A resource's variables: the bare name is the legacy pair's, `<NAME>` each listed one's.
    per_resource = set(re.findall(r'f"([A-Z_]+)\{(?:self\.)?suffix\}"', source))
    assert read, "the pattern must find the variables"
    assert per_resource == {
        "CUSTOM_VISION_ENDPOINT",
        "CUSTOM_VISION_TRAINING_KEY",
        "CUSTOM_VISION_TPS",
    }
    assert set(declared) == read | per_resource
    for name in per_resource:
        assert re.search(rf"^#\s+{name}_<NAME>=", example, re.MULTILINE), name
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


# --- numeric settings are bounded ---------------------------------------------------------------


def _row(section: str, name: str) -> list[str]:
    line = next(x for x in section.splitlines() if x.startswith(f"| `{name}` |"))
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_every_numeric_setting_documents_its_range_in_readme_and_env_example() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    source = (ROOT / "bot" / "config.py").read_text(encoding="utf-8")
    assert set(re.findall(r'r\.number\(\s*"([A-Z_]+)"', source)) == set(NUMBERS)
    numeric_fields = {
        f.name for f in Config.__dataclass_fields__.values() if f.type in ("int", "float")
    }
    assert len(numeric_fields) == len(NUMBERS), "every int/float setting has a range"
    defaults = dict(re.findall(r"^([A-Z_]+)=(.*)$", example, re.MULTILINE))
    for name, bounds in NUMBERS.items():
        assert _row(section, name)[2] == bounds.text, name
        comment = example.split(f"\n{name}=")[0].rsplit("\n\n", 1)[-1].rsplit("=", 1)[-1]
        assert f"Range: {bounds.text}." in comment, name
        default = float(defaults[name])
        assert bounds.low <= default <= bounds.high, name
        # The documented default is the one the bot uses when the variable is unset.
        assert load_config({name: defaults[name]}, serve=False) == Config(), name
    for name in set(defaults) - set(NUMBERS):
        assert _row(section, name)[2] == "—", name


def _edges(name: str) -> list[tuple[str, bool]]:
    """Return (raw value, accepted) at and beyond the range of `name`, and nonsense."""
    b = NUMBERS[name]
    step = 1 if b.whole else b.low / 10
    beyond_high = b.high + (1 if b.whole else b.high / 1000)
    cases = [
        (f"{b.low:g}", True),
        (f"{b.high:g}", True),
        (f"{b.low - step:g}", False),
        (f"{beyond_high:g}" if b.whole else repr(beyond_high), False),
        ("-1", False),
        ("nan", False),
        ("inf", False),
        ("-inf", False),
        ("1e9", False),
        ("1e12", False),
        ("1e309", False),
        ("ten", False),
    ]
    if b.whole:
        cases.append((f"{b.low + 0.5:g}", False))
    return cases


@pytest.mark.parametrize(
    ("name", "raw", "accepted"),
    [(name, raw, ok) for name in NUMBERS for raw, ok in _edges(name)],
)
def test_numeric_setting_at_and_beyond_its_bounds(name: str, raw: str, accepted: bool) -> None:
    bounds = NUMBERS[name]
    env = {**VALID, name: raw}
    if accepted:
        config = load_config(env)
        value = {f.name: getattr(config, f.name) for f in Config.__dataclass_fields__.values()}
        assert float(raw) in value.values()
        return
    with pytest.raises(ConfigError) as caught:
        load_config(env)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{name}={raw!r} is ")
    assert f"from {bounds.text} ({bounds.unit})" in problem


def test_out_of_range_numbers_are_reported_with_every_other_problem() -> None:
    env = {name: "1e12" for name in NUMBERS} | {"BOT_AUDIT_CHANNEL": "general"}
    with pytest.raises(ConfigError) as caught:
        load_config(env)
    problems = caught.value.problems
    named = [p.split(" ")[0].split("=")[0] for p in problems]
    assert set(NUMBERS) | {"BOT_AUDIT_CHANNEL", "SLACK_BOT_TOKEN"} <= set(named)
    for name, bounds in NUMBERS.items():
        assert any(p.startswith(name) and bounds.text in p for p in problems), name


@pytest.mark.parametrize("command", ["check", "serve"])
def test_bot_process_refuses_out_of_range_settings_naming_them(
    tmp_path: Path, command: str
) -> None:
    """The issue's case: TTL 1e12 crashed `serve` with a raw OverflowError; 1e9 was accepted."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        **VALID,
        "CUSTOM_VISION_ENDPOINT": "http://127.0.0.1:9",
        "BOT_DATABASE": str(tmp_path / "cvdsr.db"),
        "BOT_WORK_DIR": str(tmp_path / "work"),
        "BOT_APPROVAL_TTL_HOURS": "1e12",
        "BOT_WORKERS": "1e9",
        "BOT_DOWNLOAD_CONCURRENCY": "nan",
    }
    done = subprocess.run(
        [sys.executable, "-m", "bot", command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "OverflowError" not in done.stderr
    assert "Configuration has 3 problems" in done.stderr
    for name in ("BOT_APPROVAL_TTL_HOURS", "BOT_WORKERS", "BOT_DOWNLOAD_CONCURRENCY"):
        assert f"{name}=" in done.stderr
        assert NUMBERS[name].text in done.stderr
    assert not (tmp_path / "cvdsr.db").exists()


def test_e2e_deletion_works_at_the_longest_approval_ttl(stacks: Any) -> None:
    """1e9 hours was accepted and every deletion then failed; the top of the range works."""
    from emulators.stack import APPROVER, REQUESTER

    high = NUMBERS["BOT_APPROVAL_TTL_HOURS"].high
    stack = stacks(env={"BOT_APPROVAL_TTL_HOURS": f"{high:g}"})
    project = stack.cv.data.project_ids()[0]
    image = stack.cv.data.image_ids(project)[0]
    rid = stack.request_id(stack.command(REQUESTER, f"delete images {project} --ids {image}"))
    assert stack.wait_status(rid, "pending", "failed") == "pending", stack.bot.store.get(rid).error
    record = stack.bot.store.get(rid)
    assert record.expires_at is not None
    assert record.expires_at - stack.bot.store.clock.now() > timedelta(hours=high - 1)
    stack.wait_delivered()
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed") == "done", stack.bot.store.get(rid).error


# --- the statutory clock's settings ---------------------------------------------------------


def test_public_holidays_are_read_as_dates_duplicates_and_spaces_ignored() -> None:
    config = load_config(VALID | {"BOT_PUBLIC_HOLIDAYS": " 2026-12-25, 2026-12-26 ,2026-12-25,"})
    assert config.public_holidays == frozenset({date(2026, 12, 25), date(2026, 12, 26)})
    assert load_config(VALID).public_holidays == frozenset()
    assert load_config(VALID).reminder_hour_utc == 8


def test_public_holidays_report_every_malformed_date_at_once_with_the_other_problems() -> None:
    env = VALID | {
        "BOT_PUBLIC_HOLIDAYS": "2026-12-25,25.12.2026,2026-02-30,2026-1-1,christmas",
        "BOT_REMINDER_HOUR_UTC": "24",
    }
    with pytest.raises(ConfigError) as caught:
        load_config(env)
    assert caught.value.problems == [
        "BOT_PUBLIC_HOLIDAYS has malformed dates '25.12.2026', '2026-02-30', '2026-1-1',"
        " 'christmas': expected ISO dates like 2026-12-25, comma-separated",
        "BOT_REMINDER_HOUR_UTC='24' is out of range: expected a whole number from 0 to 23"
        " (hour of the day, UTC)",
    ]


# --- several Custom Vision resources ------------------------------------------------------------

SLACK = {k: v for k, v in VALID.items() if k.startswith("SLACK_")}


def test_config_legacy_pair_is_the_resource_named_default() -> None:
    config = load_config(VALID)
    assert config.resources == (
        Resource(
            "default",
            "https://demo.cognitiveservices.azure.com",
            Secret("training-key-value"),
            10.0,
        ),
    )
    assert config.resource("DEFAULT") is config.resources[0]
    assert config.resources[0].key_variable == "CUSTOM_VISION_TRAINING_KEY"


def test_config_reads_every_listed_resource_with_its_own_key_and_cap() -> None:
    env = {
        **SLACK,
        "CUSTOM_VISION_RESOURCES": " prod , dev_eu",
        "CUSTOM_VISION_TPS": "8",
        "CUSTOM_VISION_ENDPOINT_PROD": "https://prod.cognitiveservices.azure.com/",
        "CUSTOM_VISION_TRAINING_KEY_PROD": "prod-key-value",
        "CUSTOM_VISION_ENDPOINT_DEV_EU": "https://dev.cognitiveservices.azure.com",
        "CUSTOM_VISION_TRAINING_KEY_DEV_EU": "dev-key-value",
        "CUSTOM_VISION_TPS_DEV_EU": "2.5",
    }
    config = load_config(env)
    assert config.resources == (
        Resource(
            "prod",
            "https://prod.cognitiveservices.azure.com",
            Secret("prod-key-value"),
            8.0,
            "_PROD",
        ),
        Resource(
            "dev_eu",
            "https://dev.cognitiveservices.azure.com",
            Secret("dev-key-value"),
            2.5,
            "_DEV_EU",
        ),
    )
    assert config.resource("Dev_EU") is config.resources[1]
    assert config.resource("default") is None
    assert set(config.secrets()) >= {"prod-key-value", "dev-key-value"}
    shown = repr(config) + str(config.resources)
    assert "prod-key-value" not in shown and "dev-key-value" not in shown


def test_config_reports_every_resource_problem_at_once() -> None:
    env = {
        **SLACK,
        "CUSTOM_VISION_ENDPOINT": "https://legacy.cognitiveservices.azure.com",
        "CUSTOM_VISION_TRAINING_KEY": "legacy-key-value",
        "CUSTOM_VISION_RESOURCES": "prod,dev,PROD,bad-name,,9lives,same",
        "CUSTOM_VISION_ENDPOINT_PROD": "https://prod.cognitiveservices.azure.com",
        "CUSTOM_VISION_TPS_PROD": "100000",
        "CUSTOM_VISION_ENDPOINT_DEV": "not a url",
        "CUSTOM_VISION_TRAINING_KEY_DEV": "dev-key-value",
        "CUSTOM_VISION_TPS_DEV": "nan",
        "CUSTOM_VISION_ENDPOINT_SAME": "https://PROD.cognitiveservices.azure.com",
        "CUSTOM_VISION_TRAINING_KEY_SAME": "same-key-value",
    }
    with pytest.raises(ConfigError) as caught:
        load_config(env)
    assert caught.value.problems == [
        "CUSTOM_VISION_ENDPOINT is set but CUSTOM_VISION_RESOURCES is too: move it to "
        "CUSTOM_VISION_ENDPOINT_<NAME> of the resource it belongs to",
        "CUSTOM_VISION_TRAINING_KEY is set but CUSTOM_VISION_RESOURCES is too: move it to "
        "CUSTOM_VISION_TRAINING_KEY_<NAME> of the resource it belongs to",
        "CUSTOM_VISION_RESOURCES has malformed names 'bad-name', '', '9lives': expected names "
        "of letters, digits and underscores (starting with a letter, at most 32), "
        "comma-separated, e.g. prod,dev",
        "CUSTOM_VISION_TRAINING_KEY_PROD is missing: Azure portal > resource > Keys and Endpoint",
        "CUSTOM_VISION_TPS_PROD='100000' is malformed: expected a number from 0.1 to 1000 "
        "(calls per second)",
        "CUSTOM_VISION_ENDPOINT_DEV='not a url' is malformed: "
        "expected https://<name>.cognitiveservices.azure.com",
        "CUSTOM_VISION_TPS_DEV='nan' is malformed: expected a number from 0.1 to 1000 "
        "(calls per second)",
        "CUSTOM_VISION_RESOURCES names 'PROD' twice (names ignore case)",
        "CUSTOM_VISION_ENDPOINT_SAME is the endpoint of resource 'prod' too: "
        "each resource has its own endpoint",
    ]
    text = "\n".join(caught.value.problems)
    for key in ("legacy-key-value", "dev-key-value", "same-key-value"):
        assert key not in text


def test_config_missing_resource_variables_name_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({**SLACK, "CUSTOM_VISION_RESOURCES": "prod"})
    assert caught.value.problems == [
        "CUSTOM_VISION_ENDPOINT_PROD is missing: the resource endpoint, "
        "e.g. https://<name>.cognitiveservices.azure.com",
        "CUSTOM_VISION_TRAINING_KEY_PROD is missing: Azure portal > resource > Keys and Endpoint",
    ]


def test_bot_run_with_only_resources_configured_reports_them_instead_of_the_sandbox(
    tmp_path: Path,
) -> None:
    """`python -m bot run` starts the sandbox only when nothing is configured: a deployment
    that names its resources (and nothing else yet) is told what is missing."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "CUSTOM_VISION_RESOURCES": "prod",
        "CUSTOM_VISION_ENDPOINT_PROD": "http://127.0.0.1:9",
        "CUSTOM_VISION_TRAINING_KEY_PROD": "prod-key-run-6666",
        "BOT_DATABASE": str(tmp_path / "cvdsr.db"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "bot", "run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "SLACK_BOT_TOKEN is missing" in done.stderr
    assert "prod-key-run-6666" not in done.stdout + done.stderr
    assert not (tmp_path / "sandbox-output").exists()
