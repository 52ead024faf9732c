"""``fraud monitor`` and ``python -m fraud_detection.monitoring``: options checked before anything
starts (exit 2, naming the option), and nothing heavy imported by the command line or the
monitoring modules."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fraud_detection.cli import app
from fraud_detection.monitor_cli import EXIT_USAGE


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["monitor", *args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--p-val", "0"], "--p-val: must be in (0, 1), got 0"),
        (["--p-val", "1.5"], "--p-val: must be in (0, 1), got 1.5"),
        (["--window-size", "1"], "--window-size: must be >= 2, got 1"),
        (["--max-span", "0"], "--max-span: must be a positive number of seconds, got 0"),
        (
            ["--min-records", "0"],
            "--min-records: must be between 1 and --window-size (1000), got 0",
        ),
        (
            ["--window-size", "50", "--min-records", "60"],
            "--min-records: must be between 1 and --window-size (50), got 60",
        ),
        (["--seed", "-1"], "--seed: must be >= 0, got -1"),
        (["--metrics-port", "70000"], "--metrics-port: must be between 0 and 65535, got 70000"),
        (["--exclude", "amount"], "--exclude: unknown feature 'amount'; known: log_amount,"),
        (["--bundles", "/models"], "--bundles: must contain {version}, got '/models'"),
        (["--bundles", "/m/{version}", "--registry", "r"], "--bundles and --registry exclude"),
        (["--no-results-topic", "--results-topic", "x"], "--results-topic and --no-results-topic"),
        (["--min-coverage", "0"], "--min-coverage: must be in (0, 1], got 0"),
        (["--update-step", "1.5"], "--update-step: must be in (0, 1], got 1.5"),
        (["--tolerance", "-0.1"], "--tolerance: must be a number >= 0, got -0.1"),
        (["--label-horizon-days", "0"], "--label-horizon-days: must be a positive number, got 0"),
        (["--performance-window", "0"], "--performance-window: must be >= 1 second, got 0"),
        (["--no-performance", "--labels-topic", "l"], "--labels-topic and --no-performance"),
    ],
)
def test_a_bad_option_is_refused_before_anything_starts(args: list[str], message: str) -> None:
    code, output = invoke(*args)
    assert code == EXIT_USAGE, output
    assert f"error: {message}" in " ".join(output.split())


def test_excluding_every_feature_is_refused() -> None:
    from fraud_detection.features import FEATURE_NAMES

    args = [word for name in FEATURE_NAMES for word in ("--exclude", name)]
    code, output = invoke(*args)
    assert code == EXIT_USAGE
    assert "every feature is excluded" in output


def test_the_module_entry_point_is_the_monitor_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fraud_detection.monitoring", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Usage: python -m fraud_detection.monitoring [OPTIONS]" in result.stdout
    text = " ".join(result.stdout.split())
    assert "--window-size" in text and "Exit status: 0 stopped by Ctrl-C or SIGTERM" in text


def test_importing_the_monitor_imports_neither_alibi_detect_nor_kafka() -> None:
    code = (
        "import sys\n"
        "import fraud_detection.cli, fraud_detection.monitor_cli\n"
        "import fraud_detection.monitoring.consumer, fraud_detection.monitoring.results\n"
        "heavy = sorted(m for m in ('alibi_detect', 'kafka', 'transformers', 'tensorflow')"
        " if m in sys.modules)\n"
        "print(heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
