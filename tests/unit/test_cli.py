"""Argument handling: bad input is one clear line and exit 2."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from pyresponder import cli
from pyresponder.cli import add_backend_options, build_parser, serve_config, sync_policy_from_args
from pyresponder.syncstate import SyncPolicy


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
        (["serve", "--backend-timeout", "-1"], "more than 0"),
        (["serve", "--max-offset", "nan"], "not a finite number"),
        (["serve", "--stats-interval", "nan"], "--stats-interval"),
        (["serve", "--stats-interval", "-5"], "--stats-interval"),
        (["serve", "--receive-buffer", "99999999999"], "--receive-buffer"),
        (["serve", "--receive-buffer", "²"], "--receive-buffer"),
        (["serve", "--holdover", "inf"], "--holdover"),
        (["serve", "--holdover", "-1"], "--holdover"),
        (["serve", "--ready-timeout", "1e9"], "--ready-timeout"),
        (["serve", "--batch", "100000"], "--batch"),
        (["serve", "--send-batch", "0"], "--send-batch"),
        (["serve", "--rate-limit-slots", "0"], "--rate-limit-slots"),
        (["serve", "--rate-limit-burst", "99999999999"], "--rate-limit-burst"),
        (["serve", "--rate-limit-interval", "0"], "--rate-limit-interval"),
        (["probe", "127.0.0.1", "--timeout", "1e300"], "--timeout"),
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


def test_holdover_option_and_its_default() -> None:
    assert serve_config(build_parser().parse_args(["serve"])).policy.holdover == 60.0
    config = serve_config(build_parser().parse_args(["serve", "--holdover", "0"]))
    assert config.policy.holdover == 0.0
    result = run("serve", "--check-config", "--listen", "127.0.0.1:9999", "--holdover", "3")
    assert "holdover 3.0 s" in result.stdout


def test_backend_options_are_reusable_by_another_subcommand() -> None:
    """What `pyresponder xdp` builds on: the same options, the same SyncPolicy."""
    parser = argparse.ArgumentParser()
    add_backend_options(parser)
    args = parser.parse_args(["--backend", "127.0.0.1:4000", "--holdover", "5",
                              "--max-offset", "0.05", "--backend-timeout", "3"])
    assert sync_policy_from_args(args) == SyncPolicy(backend_timeout=3.0, max_offset=0.05,
                                                     holdover=5.0)
    assert str(args.backend) == "127.0.0.1:4000"


def test_reuse_port_is_off_unless_asked() -> None:
    assert not serve_config(build_parser().parse_args(["serve"])).reuse_port
    assert serve_config(build_parser().parse_args(["serve", "--reuse-port"])).reuse_port


def test_config_errors_from_building_policies_are_one_line(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    def refuse(**_: object) -> None:
        raise ValueError("--rate-limit-burst 1 would refuse the pool monitor")

    monkeypatch.setattr(cli, "RateLimitPolicy", refuse)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--rate-limit", "--check-config"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["pyresponder: error: --rate-limit-burst 1 would refuse the pool monitor"]
