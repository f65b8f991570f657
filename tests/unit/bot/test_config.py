"""Settings come from flags and `BOT_*` variables; flags win; bad input names itself."""

from __future__ import annotations

import msgspec
import pytest

from bot.config import ConfigError, Settings, load_settings


def test_defaults_without_flags_or_variables() -> None:
    """With nothing set, the settings are the documented defaults."""
    assert load_settings([], {}) == Settings()
    assert Settings().api_url == "http://127.0.0.1:8000"
    assert (Settings().control_host, Settings().control_port) == ("127.0.0.1", 8001)


def test_variables_are_read_and_flags_win() -> None:
    """A `BOT_*` variable sets its field unless the matching flag is given."""
    env = {"BOT_RATE": "0.2", "BOT_CONCURRENCY": "4", "BOT_API_URL": "http://api:8000/"}
    settings = load_settings(["--concurrency", "8"], env)
    assert settings.rate == 0.2
    assert settings.concurrency == 8
    assert settings.api_url == "http://api:8000"


def test_every_setting_has_a_flag_and_a_variable() -> None:
    """Each field can be set both ways."""
    values = {"api_url": "http://x:1", "log_level": "DEBUG", "control_host": "0.0.0.0"}
    for field in msgspec.structs.fields(Settings):
        raw = values.get(field.name, "3")
        by_flag = load_settings(["--" + field.name.replace("_", "-"), raw], {})
        by_env = load_settings([], {"BOT_" + field.name.upper(): raw})
        assert by_flag == by_env
        assert by_flag != Settings(), field.name


def test_reqs_per_min_is_the_rate_per_minute() -> None:
    """`--reqs-per-min 30` is `--rate 0.5`; a flag of one kind beats a variable of the other."""
    assert load_settings(["--reqs-per-min", "30"], {}).rate == 0.5
    assert load_settings(["--reqs-per-min", "30"], {"BOT_RATE": "9"}).rate == 0.5
    assert load_settings(["--rate", "2"], {"BOT_REQS_PER_MIN": "9"}).rate == 2


def test_empty_variable_counts_as_unset() -> None:
    """`BOT_COUNT=` (as compose writes an unset value) leaves the default."""
    assert load_settings([], {"BOT_COUNT": "", "BOT_DURATION": ""}).count is None


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--rate", "-1"], {}, "--rate"),
        (["--rate", "nan"], {}, "--rate"),
        (["--rate", "fast"], {}, "--rate"),
        (["--rate", "20000"], {}, "--rate"),
        ([], {"BOT_RATE": "-0.5"}, "BOT_RATE"),
        (["--reqs-per-min", "-60"], {}, "--reqs-per-min"),
        (["--concurrency", "0"], {}, "--concurrency"),
        (["--concurrency", "2.5"], {}, "--concurrency"),
        ([], {"BOT_AUTHORS": "0"}, "BOT_AUTHORS"),
        (["--delay", "-1"], {}, "--delay"),
        (["--count", "0"], {}, "--count"),
        (["--duration", "0"], {}, "--duration"),
        (["--control-port", "70000"], {}, "--control-port"),
        (["--api-url", "ftp://api"], {}, "--api-url"),
        (["--api-url", "api:8000"], {}, "--api-url"),
        (["--log-level", "LOUD"], {}, "--log-level"),
        (["--rate", "1", "--reqs-per-min", "60"], {}, "--reqs-per-min"),
        ([], {"BOT_RATE": "1", "BOT_REQS_PER_MIN": "60"}, "BOT_REQS_PER_MIN"),
        (["--speed", "3"], {}, "--speed"),
        ([], {"BOT_SPEED": "3"}, "BOT_SPEED"),
    ],
)
def test_bad_input_is_rejected_naming_it(argv: list[str], env: dict[str, str], named: str) -> None:
    """An out-of-range, malformed or unknown value fails with a message naming its source."""
    with pytest.raises(ConfigError, match=named):
        load_settings(argv, env)


def test_settings_are_frozen() -> None:
    """Nothing can change the settings after start (the rate changes through the bucket)."""
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.rate = 5  # type: ignore[misc]
