"""Settings precedence: defaults < TOML file < BLINDINFER_* environment < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from blindinfer._server.config import load_settings
from blindinfer.errors import ConfigError


def test_precedence(tmp_path: Path) -> None:
    conf = tmp_path / "blindinfer.toml"
    conf.write_text('port = 1111\nhost = "0.0.0.0"\nmax_models = 5\nhostnames = ["a.example"]\n')
    env = {"BLINDINFER_PORT": "2222", "BLINDINFER_BLINDAI_COMPAT": "true",
           "BLINDINFER_BLINDAI_PORTS": "1,2,3"}  # fmt: skip
    s = load_settings(conf, {"port": 3333, "max_models": None}, env)
    assert s.port == 3333  # flag wins over env and file
    assert s.host == "0.0.0.0" and s.max_models == 5  # file value kept where nothing overrides
    assert s.blindai_compat is True and s.blindai_ports == (1, 2, 3)
    assert s.hostnames == ["a.example"]
    assert load_settings(conf, {}, env).port == 2222  # env wins over the file
    assert load_settings(None, {}, {}).port == 8443  # default


@pytest.mark.parametrize(
    ("flags", "env", "fragment"),
    [
        ({"port": 70000}, {}, "port"),
        ({"tee": "quantum"}, {}, "unknown TEE backend"),
        ({}, {"BLINDINFER_MAX_MODELS": "many"}, "max_models"),
        ({"colour": "blue"}, {}, "colour"),
    ],
)
def test_invalid_settings_name_the_setting(
    flags: dict[str, object], env: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(None, flags, env)


def test_unreadable_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("port = = 1")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(bad, {}, {})
