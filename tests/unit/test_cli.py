"""Argument handling: bad input is one clear line and exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pyresponder.cli import build_parser, serve_config


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyresponder", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--workers", "0"], "--workers"),
        (["serve", "--workers", "two"], "--workers"),
        (["serve", "--listen", "example.org:123"], "not an IP address"),
        (["serve", "--listen", "::1"], "brackets"),
        (["serve", "--backend-timeout", "-1"], "positive"),
        (["serve", "--max-offset", "nan"], "positive"),
        (["serve", "--backend", "no-such-host.invalid:11123", "--check-config"], "resolve"),
        (["serve", "--bogus"], "unrecognized"),
        (["probe"], "required"),
        ([], "required"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert lines[0].startswith("pyresponder")


def test_check_config_prints_effective_settings() -> None:
    result = run("serve", "--check-config", "--listen", "127.0.0.1:9999", "--workers", "3")
    assert result.returncode == 0, result.stderr
    assert "listen 127.0.0.1:9999" in result.stdout
    assert "workers 3" in result.stdout


def test_help_is_readable() -> None:
    result = run("serve", "--help")
    assert result.returncode == 0
    for option in ("--listen", "--backend", "--workers", "--backend-timeout", "--max-offset",
                   "--ready-timeout"):
        assert option in result.stdout


def test_defaults() -> None:
    config = serve_config(build_parser().parse_args(["serve"]))
    assert [str(endpoint) for endpoint in config.listen] == ["[::]:123"]
    assert str(config.backend) == "127.0.0.1:11123"
    assert config.workers >= 1
    assert config.policy.backend_timeout == 10.0
    assert config.ready_timeout == 30.0
