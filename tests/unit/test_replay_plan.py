"""``fraud replay``: the pure schedule (batches and label publications), the data preparation,
the pacing, the label records, and the options refused before anything is sent."""

from __future__ import annotations

import json
import random
import re
import socket
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fraud_detection.cli import app
from fraud_detection.data.files import write_transactions
from fraud_detection.features import LABEL_DELAY_DAYS, timestamp_to_micros
from fraud_detection.replay import (
    MICROS_PER_DAY,
    UNSENDABLE,
    Pacer,
    Publish,
    ReplayError,
    ReplaySummary,
    ScoringClient,
    Send,
    Step,
    delay_micros,
    make_label,
    plan,
    prepare,
    window,
)
from fraud_detection.schema import AMOUNT, LABEL, TIMESTAMP, TRANSACTION_ID
from fraud_detection.streaming.labels import parse_label

HOUR = 3_600 * 1_000_000


def random_times(count: int, span: int, seed: int) -> list[int]:
    """Sorted times over ``span`` microseconds, with some ties."""
    rng = random.Random(seed)
    return sorted(rng.randrange(0, span) // 1_000_000 * 1_000_000 for _ in range(count))


def check_plan(times: list[int], delay: int, batch: int, steps: list[Step], flush: bool) -> None:
    """Every invariant of a plan: order, batch size, each label once, never late or too early."""
    sent_at: dict[int, int] = {}  # transaction -> step number
    published_at: dict[int, int] = {}
    data_time: int | None = None
    for number, step in enumerate(steps):
        if isinstance(step, Send):
            assert 1 <= step.stop - step.start <= batch
            assert step.start == len(sent_at), "batches go in order, each transaction once"
            batch_time = times[step.stop - 1]
            for index in range(step.start, step.stop):
                sent_at[index] = number
                # No transaction's label is due within its own batch (delay > 0).
                if delay > 0:
                    assert times[index] + delay > batch_time
            # Every label due at the data time this batch reaches was published before it,
            # except those of transactions of this very batch (zero delay).
            for index in range(step.start):
                if times[index] + delay <= batch_time:
                    assert published_at.get(index, number) < number, (index, number)
            data_time = batch_time
        else:
            assert isinstance(step, Publish)
            for index in range(step.start, step.stop):
                assert index not in published_at, "each label once"
                assert index in sent_at, "a label never precedes its transaction"
                published_at[index] = number
                if not step.early:
                    # Due by the end of the batch that follows (at most one batch early).
                    following = next((s for s in steps[number:] if isinstance(s, Send)), None)
                    reach = times[following.stop - 1] if following else data_time
                    assert reach is not None and times[index] + delay <= reach
                else:
                    assert flush and times[index] + delay > times[-1]
    assert sorted(sent_at) == list(range(len(times)))
    due_by_end = {i for i in range(len(times)) if times[i] + delay <= times[-1]}
    expected = set(range(len(times))) if flush else due_by_end
    assert set(published_at) == expected


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("delay", [0, HOUR, 7 * MICROS_PER_DAY])
@pytest.mark.parametrize("batch", [1, 7, 50])
@pytest.mark.parametrize("flush", [False, True])
def test_the_plan_keeps_every_invariant(seed: int, delay: int, batch: int, flush: bool) -> None:
    times = random_times(400, 10 * MICROS_PER_DAY, seed)
    check_plan(times, delay, batch, list(plan(times, delay, batch, flush=flush)), flush)


def test_labels_come_due_a_delay_after_their_transaction() -> None:
    day = MICROS_PER_DAY
    times = [0, day, 2 * day, 9 * day, 10 * day]
    steps = list(plan(times, 7 * day, batch=1))
    assert steps == [
        Send(0, 1),
        Send(1, 2),
        Send(2, 3),
        Publish(0, 3),  # days 0, 1 and 2 are due by day 9
        Send(3, 4),
        Send(4, 5),
    ]


def test_a_batch_is_cut_only_where_its_own_labels_would_come_due() -> None:
    day = MICROS_PER_DAY
    # Hourly transactions over 30 days: 50-transaction batches span about 2 days, well below
    # the 7-day delay, so every batch but the last is full.
    times = [hour * HOUR for hour in range(30 * 24)]
    sends = [step for step in plan(times, 7 * day, batch=50) if isinstance(step, Send)]
    assert [s.stop - s.start for s in sends[:-1]] == [50] * (len(times) // 50)
    # With a 1-day delay a batch may not reach its first transaction's label due time.
    sends = [step for step in plan(times, day, batch=50) if isinstance(step, Send)]
    assert max(s.stop - s.start for s in sends) == 24
    assert all(times[s.stop - 1] < times[s.start] + day for s in sends)


def test_a_zero_delay_publishes_each_label_right_after_its_batch() -> None:
    times = [0, 0, 5, 5, 5, 9]
    assert list(plan(times, 0, batch=10)) == [
        Send(0, 2),
        Publish(0, 2),
        Send(2, 5),
        Publish(2, 5),
        Send(5, 6),
        Publish(5, 6),
    ]


def test_flush_publishes_the_labels_not_due_yet_and_marks_them_early() -> None:
    day = MICROS_PER_DAY
    times = [0, 3 * day, 8 * day]
    assert list(plan(times, 7 * day, batch=10)) == [
        Send(0, 2),
        Publish(0, 1),  # day 0's label is due on day 7, before the batch reaching day 8
        Send(2, 3),
    ]
    assert list(plan(times, 7 * day, batch=10, flush=True))[-1] == Publish(1, 3, early=True)


def test_the_plan_refuses_what_it_cannot_schedule() -> None:
    with pytest.raises(ValueError, match="sorted"):
        list(plan([2, 1], 0, 1))
    with pytest.raises(ValueError, match="batch"):
        list(plan([1], 0, 0))
    assert list(plan([], HOUR, 5, flush=True)) == []


def test_the_window_bounds_are_start_inclusive_until_exclusive() -> None:
    times = [10, 20, 20, 30, 40]
    assert window(times, None, None) == (0, 5)
    assert window(times, 20, 40) == (1, 4)
    assert window(times, 41, None) == (5, 5)
    assert window(times, 30, 20) == (3, 3)


def test_a_delay_in_days_becomes_whole_microseconds() -> None:
    assert delay_micros(7) == 7 * MICROS_PER_DAY
    assert delay_micros(0.5) == MICROS_PER_DAY // 2
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=">= 0"):
            delay_micros(bad)


class FakeClock:
    """A clock that advances only when slept on or told to (time spent in requests)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_pacer_keeps_an_absolute_schedule() -> None:
    clock = FakeClock()
    pacer = Pacer(10.0, clock=lambda: clock.now, sleep=clock.sleep)
    sends = []
    for index in (0, 10, 20, 40):
        pacer.wait(index)
        sends.append(clock.now)
        clock.now += 0.3 if index != 10 else 2.5  # one slow request
    # Transaction n goes at start + n / rate; a slow request is caught up, not added up.
    assert sends == pytest.approx([100.0, 101.0, 103.5, 104.0])
    assert clock.slept == pytest.approx([0.7, 0.2])


def test_a_hold_moves_the_schedule_on_instead_of_bursting_after_it() -> None:
    clock = FakeClock()
    pacer = Pacer(10.0, clock=lambda: clock.now, sleep=clock.sleep)
    pacer.wait(0)
    held_for = iter([True] * 26 + [False])  # held: asked once, then 25 polls of 0.2 s
    assert pacer.hold(lambda: next(held_for)) == pytest.approx(5.0)
    before = clock.now
    pacer.wait(10)  # due 1 s after the start, which the 5 s hold moved on to 105.0
    assert clock.now == pytest.approx(before + 1.0)
    assert pacer.hold(lambda: False) == 0.0


def test_a_zero_rate_never_waits() -> None:
    clock = FakeClock()
    pacer = Pacer(0.0, clock=lambda: clock.now, sleep=clock.sleep)
    for index in range(0, 500, 50):
        pacer.wait(index)
    assert clock.slept == []


def test_prepare_sorts_bounds_and_keeps_labels(transactions: pd.DataFrame) -> None:
    frame = transactions.iloc[::-1].reset_index(drop=True)
    data = prepare(frame)
    # t2 is 03:07:56+02:00, after t1 (00:02:10Z).
    assert [i[TRANSACTION_ID] for i in data.instances] == ["0042", "t1", "t2", "t3", "t4"]
    assert data.times == sorted(data.times)
    assert data.labels == [0, 0, 1, 0, 0]
    assert data.has_labels and not data.skipped
    bounded = prepare(
        frame,
        start=timestamp_to_micros("2018-04-01T01:00:00"),
        until=timestamp_to_micros("2018-04-03"),
    )
    assert [i[TRANSACTION_ID] for i in bounded.instances] == ["t2", "t3"]


def test_prepare_skips_what_cannot_be_placed_or_sent(transactions: pd.DataFrame) -> None:
    frame = transactions.astype({AMOUNT: object})
    frame.loc[1, TIMESTAMP] = "yesterday"
    frame.loc[2, AMOUNT] = "lots"
    frame.loc[3, LABEL] = None
    data = prepare(frame)
    assert [i[TRANSACTION_ID] for i in data.instances] == ["0042", "t3", "t4"]
    assert data.labels == [0, -1, 0]
    assert data.skipped == {UNSENDABLE: 2}
    assert any("t1: timestamp" in example for example in data.examples)
    assert not prepare(frame.drop(columns=[LABEL])).has_labels


def test_a_label_is_labelled_a_delay_after_its_transaction(transactions: pd.DataFrame) -> None:
    data = prepare(transactions)
    delay = delay_micros(LABEL_DELAY_DAYS)
    label = make_label(data.instances[1], data.times[1], data.labels[1], delay)
    parsed = parse_label(label.value())
    assert parsed == label
    assert label.key() == data.instances[1][TRANSACTION_ID].encode()
    assert parsed.labelled_at_micros - parsed.timestamp_micros == LABEL_DELAY_DAYS * MICROS_PER_DAY
    assert parsed.merchant_id == data.instances[1]["merchant_id"]


def test_the_summary_counts_and_renders() -> None:
    summary = ReplaySummary(sent=10, scored=8, flagged=2, labels_fraud=1, labels_legit=4)
    summary.rejected.update({"400": 1, "409": 1})
    summary.first_time, summary.last_time = 0, MICROS_PER_DAY
    summary.wall_seconds = 2.0
    body = summary.to_dict()
    assert body["rejected_total"] == 2 and body["labels_published"] == 5
    assert body["rate_per_s"] == 5.0
    assert body["last_data_time"].startswith("1970-01-02T00:00:00")
    assert "400: 1, 409: 1" in summary.render()


# ------------------------------------------------------------------------------- the CLI
runner = CliRunner()


@pytest.fixture
def data_file(tmp_path: Path, transactions: pd.DataFrame) -> Path:
    return write_transactions(transactions, tmp_path / "tx.csv")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch", "0"], "--batch: must be at least 1"),
        (["--rate", "-1"], "--rate: must be a number >= 0"),
        (["--label-delay-days", "-2"], "--label-delay-days: must be a finite number of days"),
        (["--timeout", "0"], "--timeout: must be a positive"),
        (["--connect-timeout", "-1"], "--connect-timeout: must be"),
        (["--start", "someday"], "--start: not an ISO-8601 date"),
        (["--start", "2018-04-02", "--until", "2018-04-01"], "--until: must be after --start"),
        (["--url", "localhost:8080"], "--url: must start with http"),
        (["--labels-topic", " "], "--labels-topic: must not be empty"),
        (["--start", "2030-01-01"], "--data: no transactions to replay within --start/--until"),
    ],
)
def test_bad_options_exit_2_naming_the_flag(data_file: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["replay", "--data", str(data_file), *args])
    assert result.exit_code == 2, result.output
    assert f"error: {message}" in " ".join(result.output.split())


def test_a_missing_data_file_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["replay", "--data", str(tmp_path / "nope.csv")])
    assert result.exit_code == 2
    assert "error: --data:" in result.output and "nope.csv" in result.output


def test_the_help_names_the_features_label_delay() -> None:
    result = runner.invoke(app, ["replay", "--help"])
    assert result.exit_code == 0
    help_text = " ".join(result.output.split())
    assert f"features assume, {LABEL_DELAY_DAYS}]" in help_text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_server_exits_1_with_one_line_after_the_connect_timeout(
    tmp_path: Path, transactions: pd.DataFrame
) -> None:
    unlabelled = write_transactions(transactions.drop(columns=[LABEL]), tmp_path / "u.csv")
    url = f"http://127.0.0.1:{free_port()}"
    summary = tmp_path / "summary.json"
    result = runner.invoke(
        app,
        [
            *("replay", "--data", str(unlabelled), "--url", url),
            *("--connect-timeout", "0.5", "--summary", str(summary)),
        ],
    )
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "did not answer within 0.5 s" in errors[0]
    assert "without labels" in result.output
    assert json.loads(summary.read_text())["scored"] == 0


def test_the_client_gives_up_after_the_connect_timeout() -> None:
    client = ScoringClient(f"http://127.0.0.1:{free_port()}", "m", connect_timeout_s=0.3)
    try:
        with pytest.raises(ReplayError, match=re.escape(":predict did not answer within 0.3 s")):
            client.score([{"transaction_id": "x"}])
    finally:
        client.close()
