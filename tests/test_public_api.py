"""Every name the package advertises resolves, and the CLI routes its commands."""

import subprocess
import sys

import pytest

import mad_distill
from mad_distill import cli


@pytest.mark.parametrize("name", mad_distill.__all__)
def test_public_names_resolve(name):
    assert getattr(mad_distill, name) is not None


def test_unknown_name_raises():
    with pytest.raises(AttributeError, match="no_such_thing"):
        mad_distill.no_such_thing  # noqa: B018


def test_cli_help_lists_commands():
    out = subprocess.run(
        [sys.executable, "-m", "mad_distill.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for name in cli.COMMANDS:
        assert name in out.stdout


def test_cli_unknown_command_names_it():
    out = subprocess.run(
        [sys.executable, "-m", "mad_distill.cli", "frobnicate"], capture_output=True, text=True
    )
    assert out.returncode != 0 and "frobnicate" in out.stderr
