"""The ``fraud`` command line: help screens, ``--version``, the exit statuses, arguments checked
before anything runs, where ``fraud validate`` finds bad rows, and rollback of an empty registry.

The commands run in-process through typer's test runner; the pipeline's parameters come from the
real pipeline (kfp), and no pipeline step runs here (see tests/integration/test_pipeline_cli.py).
"""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from fraud_detection.cli import DISTRIBUTION, app
from fraud_detection.data.files import write_transactions
from fraud_detection.pipeline.dag import pipeline_parameters
from fraud_detection.pipeline_cli import (
    CLUSTER_EXIT_CODES,
    EXIT_FAILED,
    EXIT_GATE_REFUSED,
    EXIT_INVALID_ARGUMENTS,
    EXIT_OK,
    RUN_EXIT_CODES,
)
from fraud_detection.schema import AMOUNT, CATEGORY


def invoke(*args: str, columns: int = 80) -> tuple[int, str]:
    """Run ``fraud ARGS``; the exit status and everything printed.

    Help screens are 80 columns wide (the test runner's fixed width); ``columns`` is the width
    of what rich prints (errors, tables).
    """
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": str(columns)})
    return result.exit_code, result.output


def flat(text: str) -> str:
    """Text with every run of whitespace (line wraps included) as one space."""
    return " ".join(text.split())


def command_paths() -> list[list[str]]:
    """Every command and command group of ``fraud``, as the words that name it."""
    paths: list[list[str]] = [[]]

    def walk(group: typer.core.TyperGroup, prefix: list[str]) -> None:
        for name, command in group.commands.items():
            paths.append([*prefix, name])
            if isinstance(command, typer.core.TyperGroup):
                walk(command, [*prefix, name])

    walk(typer.main.get_command(app), [])
    return paths


def test_every_command_is_reached_by_the_help_walk() -> None:
    names = {" ".join(path) for path in command_paths()}
    assert {
        "",
        "validate",
        "pipeline run",
        "pipeline submit",
        "model rollback",
        "kafka up",
    } <= names
    assert "serve" in names


@pytest.mark.parametrize("path", command_paths(), ids=lambda path: " ".join(path) or "fraud")
def test_a_help_screen_shows_no_value_for_a_flag_and_cuts_no_word(path: list[str]) -> None:
    code, output = invoke(*path, "--help")
    assert code == EXIT_OK, output
    assert "<bool>" not in output  # --help, --mirror/--no-mirror take no value
    assert "…" not in output  # long words wrap at 80 columns rather than being cut


def test_help_text_in_brackets_is_printed_as_written() -> None:
    code, output = invoke("kafka", "up", "--help")
    assert code == EXIT_OK
    text = flat(output)
    assert "Port to listen on [default: a free one]." in text
    assert "Topic to create (repeatable) [default: the project's topics]." in text
    assert "[default: $FRAUD_STATE_DIR/kafka, else .fraud/kafka]" in text


def test_long_defaults_are_whole_at_80_columns() -> None:
    _, output = invoke("pipeline", "compile", "--help")
    assert "pipelines/fraud_training_pipeline.yaml" in output
    _, output = invoke("serve", "--help")
    assert "$FRAUD_SERVING_STATE_DIR" in output


@pytest.mark.parametrize(
    ("option", "parameter"),
    [("--min-recall", "min_recall"), ("--min-f1", "min_f1"), ("--threshold", "threshold")],
)
def test_the_gate_options_show_the_defaults_the_pipeline_uses(option: str, parameter: str) -> None:
    _, output = invoke("pipeline", "run", "--help")
    match = re.search(rf"{option} <float> .*?\[default: ([0-9.]+)\]", flat(output))
    assert match, output
    assert float(match.group(1)) == pipeline_parameters()[parameter][1]


def test_version_prints_the_installed_version() -> None:
    code, output = invoke("--version")
    assert code == EXIT_OK
    assert output == f"{DISTRIBUTION} {version(DISTRIBUTION)}\n"


def test_the_exit_statuses_are_distinct_and_in_the_commands_help() -> None:
    assert len({EXIT_OK, EXIT_FAILED, EXIT_INVALID_ARGUMENTS, EXIT_GATE_REFUSED}) == 4
    assert EXIT_OK == 0 and EXIT_INVALID_ARGUMENTS == 2  # 2: what click uses for usage errors
    assert set(RUN_EXIT_CODES) == {EXIT_OK, EXIT_FAILED, EXIT_INVALID_ARGUMENTS, EXIT_GATE_REFUSED}
    _, output = invoke("pipeline", "run", "--help")
    for code, meaning in RUN_EXIT_CODES.items():
        assert f"{code} {meaning}" in flat(output)
    for command in ("submit", "schedule"):
        _, output = invoke("pipeline", command, "--help")
        for code, meaning in CLUSTER_EXIT_CODES.items():
            assert f"{code} {meaning}" in flat(output)
    assert invoke("pipeline", "run", "--no-such-option")[0] == EXIT_INVALID_ARGUMENTS


# --------------------------------------------------------- arguments checked before any step
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-recall", "2"], "--min-recall: must be between 0 and 1, got 2"),
        (["--min-f1", "-1"], "--min-f1: must be between 0 and 1, got -1"),
        (["--threshold", "0"], "--threshold: must be in (0, 1), got 0"),
        (["--seed", "-1"], "--seed: must be >= 0, got -1"),
        (["--split", "random"], "--split: must be one of stratified, temporal, got 'random'"),
        (["--train-start", "2018-04-01"], "give all of train_start, train_end"),
        (["--param", "n_estimators=-3"], "--param n_estimators: must be an integer >= 1, got -3"),
        (["--param", "depth=3"], "--param depth: unknown pipeline parameter; known:"),
        (["--param", "seed=forty"], "--param seed: 'forty' is not a valid Integer"),
        (["--param", "seed"], "--param 'seed': expected KEY=VALUE"),
        (["--min-recall", "0.5", "--param", "min_recall=7"], "--param min_recall: must be"),
    ],
)
def test_a_bad_argument_fails_the_run_before_any_step(
    args: list[str], message: str, tmp_path: Path, transactions: pd.DataFrame
) -> None:
    data = write_transactions(transactions, tmp_path / "tx.csv")
    out = tmp_path / "run"
    code, output = invoke(
        "pipeline", "run", "--data", str(data), "--output-dir", str(out), *args, columns=400
    )
    assert code == EXIT_INVALID_ARGUMENTS, output
    assert message in output
    assert not out.exists()  # no step ran


def test_a_bad_argument_is_refused_before_data_are_generated(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, output = invoke("pipeline", "run", "--output-dir", str(out), "--min-f1", "1.5")
    assert code == EXIT_INVALID_ARGUMENTS
    assert "--min-f1: must be between 0 and 1, got 1.5" in output
    assert not out.exists()


# ------------------------------------------------------------------ where validate finds rows
def bad_rows(transactions: pd.DataFrame) -> pd.DataFrame:
    """Row 3 has a negative amount; row 1's category spans two lines of a CSV file."""
    frame = transactions.copy()
    frame.loc[1, CATEGORY] = "travel\nabroad"
    frame.loc[3, AMOUNT] = -2.0
    return frame


def example_cell(output: str) -> str:
    """The example-rows cell of the amount's row of the printed report."""
    line = next(line for line in output.splitlines() if "amt in range" in line)
    return line.split("│")[4].strip()


@pytest.mark.parametrize("name", ["bad.csv", "bad.csv.gz"])
def test_validate_names_the_line_of_a_csv_file(
    name: str, tmp_path: Path, transactions: pd.DataFrame
) -> None:
    path = write_transactions(bad_rows(transactions), tmp_path / name)
    code, output = invoke("validate", str(path), columns=200)
    assert code == 1
    # The header is line 1, rows 0 to 2 are on lines 2 to 5 (row 1 spans two), row 3 on line 6.
    assert example_cell(output) == "line 6"


def test_validate_names_the_row_of_a_parquet_file(
    tmp_path: Path, transactions: pd.DataFrame
) -> None:
    path = write_transactions(bad_rows(transactions), tmp_path / "bad.parquet")
    code, output = invoke("validate", str(path), columns=200)
    assert code == 1
    assert example_cell(output) == "row 3"


def test_validate_names_the_file_of_a_row_among_several(
    tmp_path: Path, transactions: pd.DataFrame
) -> None:
    good = write_transactions(transactions.head(2), tmp_path / "first.parquet")
    second = write_transactions(bad_rows(transactions).iloc[2:], tmp_path / "second.csv")
    code, output = invoke("validate", str(good), str(second), columns=200)
    assert code == 1
    assert example_cell(output) == "second.csv line 3"  # the frame's row 3, the file's row 1


# --------------------------------------------------------------------------------- registry
def test_rollback_on_an_empty_registry_says_it_is_empty(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    code, output = invoke("model", "rollback", "--registry", str(registry), columns=400)
    assert code == 1
    assert f"the registry at {registry} is empty: no model to roll back to" in output
    code, output = invoke("model", "rollback", "v1", "--registry", str(registry), columns=400)
    assert code == 1 and "is empty" in output
