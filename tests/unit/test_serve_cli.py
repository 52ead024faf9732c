"""``fraud serve``'s options checked before anything starts: a bad ``--startup-timeout`` is a
usage error naming the option; a good one reaches the stack's configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fraud_detection.cli import app
from fraud_detection.serve_cli import EXIT_USAGE
from fraud_detection.serving.launcher import ServingStack, StackConfig


def invoke(*args: str) -> tuple[int, str]:
    """Run ``fraud ARGS`` in-process; the exit status and everything printed."""
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_a_startup_timeout_that_is_not_a_positive_number_is_refused(
    value: str, tmp_path: Path
) -> None:
    # A bundle directory that does not exist: the option is checked before anything is read.
    code, output = invoke(
        "serve", "--model-dir", str(tmp_path / "none"), "--startup-timeout", value
    )
    assert code == EXIT_USAGE, output
    assert "--startup-timeout: must be a positive number of seconds" in output, output


def test_the_startup_timeout_is_in_the_help_with_its_default() -> None:
    code, output = invoke("serve", "--help")
    assert code == 0, output
    flat = " ".join(output.split())
    assert "--startup-timeout" in flat and "[default: 60.0]" in flat.split("--startup-timeout")[1]


@pytest.mark.parametrize("seconds", [0.0, -1.0, float("nan")])
def test_the_stack_refuses_a_startup_timeout_that_is_not_positive(
    seconds: float, tmp_path: Path
) -> None:
    config = StackConfig(model_dir=tmp_path, mirror=False, startup_timeout_s=seconds)
    with pytest.raises(ValueError, match="startup_timeout_s must be positive"):
        ServingStack(config)
