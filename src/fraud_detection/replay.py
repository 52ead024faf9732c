"""Traffic replay with delayed labels: historical transactions sent to the scoring endpoint in
time order, each one's label published to the labels topic once the replay's data time has
reached the transaction's time plus the label delay.

The *data time* is the timestamp of the latest transaction sent. Transactions are sent in
batches (one KServe v1 request each) and the labels come due in between:

* :func:`plan` is the schedule, pure: from the sorted transaction times and the delay it yields
  :class:`Send` and :class:`Publish` steps. Labels are published strictly before the first batch
  whose data time reaches their due time (so at most one batch early, never late), and a batch
  never holds a transaction whose own label comes due within it (so a label never precedes its
  transaction). The transformer's merchant risk for a transaction on day D uses the labels of
  days up to D - 8, so a label due at its transaction's time + 7 days is published at least a
  day before any transaction needs it.
* :class:`Pacer` holds ``--rate`` by an absolute schedule (the n-th transaction is sent no
  earlier than ``n / rate`` seconds after the start), so slow requests do not add up to drift.
* :class:`ScoringClient` (HTTP) and :class:`LabelPublisher` (Kafka) are the thin shell;
  :func:`run_replay` drives them through the plan and returns a :class:`ReplaySummary`.

A request the server refuses with a 4xx naming instances (``instances[3].amt``) is sent again
without them, so one malformed row is rejected and the rest of its batch is scored. Rejected
transactions get no label: they were never scored.
"""

from __future__ import annotations

import bisect
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fraud_detection.schema import LABEL, MERCHANT_ID, TIMESTAMP, TRANSACTION_ID

if TYPE_CHECKING:
    import httpx
    import numpy as np
    import pandas as pd

    from fraud_detection.streaming.labels import Label

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_BATCH = 50
DEFAULT_CONNECT_TIMEOUT_S = 30.0
DEFAULT_REQUEST_TIMEOUT_S = 30.0
MICROS_PER_DAY = 86_400 * 1_000_000
#: How many rejection reasons are kept for the report.
MAX_REASONS = 5
#: The summary's key for rows that could not be made into a request (not sent).
UNSENDABLE = "unsendable"
_INSTANCE_FIELD = re.compile(r"^instances\[(\d+)\](?:\.(.*))?$")


class ReplayError(RuntimeError):
    """The replay cannot go on: the server or the broker is unreachable, or refuses it all."""


# ------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Send:
    """Send transactions ``start`` to ``stop - 1`` (positions in time order) in one request."""

    start: int
    stop: int


@dataclass(frozen=True)
class Publish:
    """Publish the labels of transactions ``start`` to ``stop - 1``; ``early`` when they are not
    due yet (``--flush-labels`` at the end)."""

    start: int
    stop: int
    early: bool = False


Step = Send | Publish


def default_delay_days() -> float:
    """The label delay the features assume (:data:`fraud_detection.features.LABEL_DELAY_DAYS`)."""
    from fraud_detection.features import LABEL_DELAY_DAYS

    return float(LABEL_DELAY_DAYS)


def delay_micros(days: float) -> int:
    """A label delay in days as whole microseconds; ``ValueError`` unless finite and >= 0."""
    if not (math.isfinite(days) and days >= 0):
        raise ValueError(f"must be a finite number of days >= 0, got {days:g}")
    return round(days * MICROS_PER_DAY)


def plan(times: Sequence[int], delay: int, batch: int, flush: bool = False) -> Iterator[Step]:
    """The replay's steps for transactions at ``times`` (microseconds, sorted ascending).

    A label is due at its transaction's time + ``delay``. Each :class:`Send` is preceded by a
    :class:`Publish` of the labels (of transactions already sent) due at or before the batch's
    last time, i.e. the data time the batch reaches. A batch holds at most ``batch``
    transactions and none at or after its first transaction's label due time (with a zero
    delay, the transactions sharing the first one's time), so a label is never published before
    its transaction. After the last batch the labels due by then are published, and with
    ``flush`` the rest too (``early``).
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    if delay < 0:
        raise ValueError(f"delay must be >= 0, got {delay}")
    count = len(times)
    if any(times[i] > times[i + 1] for i in range(count - 1)):
        raise ValueError("times must be sorted ascending")
    sent = published = 0
    while sent < count:
        first = times[sent]
        stop = min(sent + batch, count)
        # Before the first label of this batch comes due; with a zero delay, the ties.
        stop = min(
            stop,
            max(
                bisect.bisect_left(times, first + delay, sent, stop),
                bisect.bisect_right(times, first, sent, stop),
            ),
        )
        due = min(sent, bisect.bisect_right(times, times[stop - 1] - delay, published, sent))
        if due > published:
            yield Publish(published, due)
            published = due
        yield Send(sent, stop)
        sent = stop
    if count:
        due = bisect.bisect_right(times, times[-1] - delay, published, count)
        if due > published:
            yield Publish(published, due)
            published = due
    if flush and published < count:
        yield Publish(published, count, early=True)


def window(times: Sequence[int], start: int | None, until: int | None) -> tuple[int, int]:
    """Positions ``[first, stop)`` of the sorted ``times`` with ``start <= time < until``."""
    first = 0 if start is None else bisect.bisect_left(times, start)
    stop = len(times) if until is None else bisect.bisect_left(times, until)
    return first, max(first, stop)


class Pacer:
    """Holds a rate by an absolute schedule: transaction ``n`` goes no earlier than
    ``n / rate`` seconds after the first call. A rate of 0 never waits."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"rate must be a finite number >= 0, got {rate:g}")
        self.rate = rate
        self.clock = clock
        self.sleep = sleep
        self.started: float | None = None

    def wait(self, index: int) -> None:
        """Block until transaction ``index`` (0-based, over the whole replay) may be sent."""
        now = self.clock()
        if self.started is None:
            self.started = now
        if not self.rate:
            return
        delay = self.started + index / self.rate - now
        if delay > 0:
            self.sleep(delay)

    def hold(self, held: Callable[[], bool], poll_s: float = 0.2) -> float:
        """Wait while ``held()`` is true; the schedule moves on by the time waited (no burst to
        catch up afterwards). Returns the seconds waited."""
        if not held():
            return 0.0
        began = self.clock()
        while held():
            self.sleep(poll_s)
        waited = self.clock() - began
        if self.started is not None:
            self.started += waited
        return waited


# ------------------------------------------------------------------------------- the data
@dataclass
class ReplayData:
    """Transactions ready to replay, in time order.

    ``instances`` are the scoring instances, ``times`` their timestamps in microseconds,
    ``labels`` each one's ``is_fraud`` (-1 when it has none); ``has_labels`` is False when the
    files carry no ``is_fraud`` column. ``skipped`` counts rows left out by reason, with
    ``examples`` of them.
    """

    instances: list[dict[str, Any]]
    times: list[int]
    labels: list[int]
    has_labels: bool
    skipped: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.instances)


def _label_values(frame: pd.DataFrame) -> np.ndarray:
    import numpy as np
    import pandas as pd

    if LABEL not in frame.columns:
        return np.full(len(frame), -1, dtype=np.int64)
    values = pd.to_numeric(frame[LABEL], errors="coerce")
    return np.where(values.isin([0, 1]), values.fillna(-1), -1).astype(np.int64)


def prepare(frame: pd.DataFrame, start: int | None = None, until: int | None = None) -> ReplayData:
    """The rows of ``frame`` (canonical names, values as read) to replay, sorted by time, within
    ``start <= time < until`` (microseconds).

    A row whose timestamp is not ISO-8601 cannot be placed in time and one whose values cannot
    be put in a request at all (e.g. an amount that is not a number) is skipped and counted
    under :data:`UNSENDABLE`; every other problem is the server's to report.
    """
    import numpy as np
    import pandas as pd

    from fraud_detection.serving.demo import to_instance

    stamps = pd.to_datetime(frame[TIMESTAMP], utc=True, format="ISO8601", errors="coerce")
    valid = stamps.notna().to_numpy()
    micros = stamps.fillna(pd.Timestamp(0, tz="UTC")).dt.as_unit("us").astype("int64").to_numpy()
    labels = _label_values(frame)
    skipped: Counter[str] = Counter()
    examples: list[str] = []
    rows = frame.to_dict("records")
    for position in np.flatnonzero(~valid):
        skipped[UNSENDABLE] += 1
        if len(examples) < MAX_REASONS:
            row = rows[position]
            examples.append(
                f"{row.get(TRANSACTION_ID)}: {TIMESTAMP}: not an ISO-8601 timestamp in range: "
                f"{row.get(TIMESTAMP)!r}"
            )
    order = np.flatnonzero(valid)
    order = order[np.argsort(micros[order], kind="stable")]
    sorted_times = micros[order].tolist()
    first, stop = window(sorted_times, start, until)
    instances: list[dict[str, Any]] = []
    times: list[int] = []
    kept_labels: list[int] = []
    for position in order[first:stop]:
        row = rows[position]
        try:
            instance = to_instance(row)
        except (TypeError, ValueError, KeyError) as exc:
            skipped[UNSENDABLE] += 1
            if len(examples) < MAX_REASONS:
                examples.append(f"{row.get(TRANSACTION_ID)}: cannot be sent: {exc}")
            continue
        instances.append(instance)
        times.append(int(micros[position]))
        kept_labels.append(int(labels[position]))
    return ReplayData(
        instances=instances,
        times=times,
        labels=kept_labels,
        has_labels=LABEL in frame.columns,
        skipped=skipped,
        examples=examples,
    )


def make_label(instance: Mapping[str, Any], micros: int, is_fraud: int, delay: int) -> Label:
    """The label record of a replayed transaction: labelled ``delay`` after its time."""
    from fraud_detection.streaming.labels import Label

    return Label(
        transaction_id=instance[TRANSACTION_ID],
        is_fraud=is_fraud,
        labelled_at_micros=micros + delay,
        merchant_id=instance[MERCHANT_ID],
        timestamp_micros=micros,
    )


# ------------------------------------------------------------------------------- HTTP
@dataclass
class BatchResult:
    """What one batch got: predictions by position in the batch, and the rejected positions
    with their HTTP status and reason."""

    predictions: dict[int, Mapping[str, Any]] = field(default_factory=dict)
    rejected: dict[int, tuple[int, str]] = field(default_factory=dict)


def _problems(response: httpx.Response) -> list[tuple[str, str]]:
    """The ``(field, reason)`` pairs of an error answer (its text when it is not the servers'
    JSON error)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        found = [
            (str(item.get("field", "")), str(item.get("reason", "")))
            for item in body.get("errors") or []
            if isinstance(item, dict)
        ]
        if found:
            return found
        if "field" in body or "reason" in body:
            return [(str(body.get("field", "")), str(body.get("reason", "")))]
        if "error" in body:
            return [("", str(body["error"]))]
    return [("", response.text.strip()[:200] or response.reason_phrase)]


def _clock_refusal(problems: Sequence[tuple[str, str]]) -> bool:
    """Whether every problem is a timestamp refused for the server's clock."""
    return bool(problems) and all(
        name.endswith(f".{TIMESTAMP}") and " clock " in reason for name, reason in problems
    )


class ScoringClient:
    """Posts KServe v1 requests to a transformer, retrying until it answers.

    A connection failure or a 5xx answer is retried with back-off (0.2 s doubling up to 2 s)
    for up to ``connect_timeout_s``; then :class:`ReplayError`. A 4xx naming instances is sent
    again without them; one naming none rejects the whole batch.
    """

    def __init__(
        self,
        url: str,
        model: str,
        timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        import httpx

        self.predict_url = f"{url.rstrip('/')}/v1/models/{model}:predict"
        self.connect_timeout_s = connect_timeout_s
        self.client = httpx.Client(timeout=timeout_s)
        self.accepted_any = False

    def close(self) -> None:
        """Close the HTTP connections."""
        self.client.close()

    def _post(self, instances: list[dict[str, Any]]) -> httpx.Response:
        import httpx
        import orjson

        body = orjson.dumps({"instances": instances}, option=orjson.OPT_SERIALIZE_NUMPY)
        headers = {"Content-Type": "application/json"}
        deadline = time.monotonic() + self.connect_timeout_s
        pause = 0.2
        while True:
            try:
                response = self.client.post(self.predict_url, content=body, headers=headers)
                if response.status_code < 500:
                    return response
                problem = f"HTTP {response.status_code}: {_problems(response)[0][1]}"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if time.monotonic() + pause > deadline:
                raise ReplayError(
                    f"the server at {self.predict_url} did not answer within "
                    f"{self.connect_timeout_s:g} s ({problem})"
                )
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    def score(self, instances: Sequence[dict[str, Any]]) -> BatchResult:
        """Score a batch; see the class docstring for what is retried and what is rejected."""
        result = BatchResult()
        pending = list(range(len(instances)))
        while pending:
            response = self._post([instances[i] for i in pending])
            if response.status_code == 200:
                predictions = response.json().get("predictions", [])
                if len(predictions) != len(pending):
                    raise ReplayError(
                        f"{self.predict_url} answered {len(predictions)} predictions for "
                        f"{len(pending)} instances"
                    )
                result.predictions.update(zip(pending, predictions, strict=True))
                self.accepted_any = True
                return result
            problems = _problems(response)
            if not self.accepted_any and _clock_refusal(problems):
                name, reason = problems[0]
                hint = (
                    "start the server with `fraud serve --clock event` to replay past data"
                    if "wall clock" in reason
                    else "the data must continue where the server's state ends (restart the "
                    "server without its saved state, `fraud serve --clock event --no-state`, "
                    "or pick --start)"
                )
                raise ReplayError(
                    f"the server refused the first transactions for their timestamp "
                    f"({name}: {reason}): {hint}"
                )
            named: dict[int, str] = {}
            for name, reason in problems:
                match = _INSTANCE_FIELD.match(name)
                if match and int(match.group(1)) < len(pending):
                    position = pending[int(match.group(1))]
                    named.setdefault(position, f"{match.group(2) or 'instance'}: {reason}")
            if not named:
                name, reason = problems[0]
                for position in pending:
                    result.rejected[position] = (
                        response.status_code,
                        f"{name}: {reason}" if name else reason,
                    )
                return result
            for position, reason in named.items():
                result.rejected[position] = (response.status_code, reason)
            pending = [position for position in pending if position not in named]
        return result


# ------------------------------------------------------------------------------- Kafka
class LabelPublisher:
    """Publishes label records (and labelled transactions) through one producer; counts the
    records the broker did not acknowledge."""

    def __init__(
        self,
        bootstrap: str,
        labels_topic: str,
        transactions_topic: str | None,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        self.bootstrap = bootstrap
        self.labels_topic = labels_topic
        self.transactions_topic = transactions_topic
        self.connect_timeout_s = connect_timeout_s
        self.producer: Any = None
        self.failed = 0
        self.first_failure: str | None = None

    def start(self) -> None:
        """Wait for the broker, create the topics (one partition each, kept in order), connect."""
        from fraud_detection.streaming.kafka import (
            BrokerUnavailableError,
            create_topics,
            make_producer,
            wait_for_broker,
        )

        try:
            wait_for_broker(self.bootstrap, self.connect_timeout_s)
        except BrokerUnavailableError as exc:
            raise ReplayError(str(exc)) from None
        topics = [self.labels_topic] + (
            [self.transactions_topic] if self.transactions_topic else []
        )
        create_topics(self.bootstrap, topics)
        self.producer = make_producer(self.bootstrap, linger_ms=5)

    def _failed(self, exc: BaseException) -> None:
        self.failed += 1
        if self.first_failure is None:
            self.first_failure = f"{type(exc).__name__}: {exc}"

    def publish(self, label: Label, transaction: Mapping[str, Any] | None) -> None:
        """Send a label, and the labelled transaction when given (both keyed by its id)."""
        import orjson

        key = label.key()
        self.producer.send(self.labels_topic, key=key, value=label.value()).add_errback(
            self._failed
        )
        if transaction is not None and self.transactions_topic:
            value = orjson.dumps({**transaction, LABEL: label.is_fraud})
            self.producer.send(self.transactions_topic, key=key, value=value).add_errback(
                self._failed
            )

    def close(self, timeout_s: float = 60.0) -> None:
        """Flush (every record acknowledged or failed) and close; :class:`ReplayError` when a
        record was not acknowledged."""
        if self.producer is None:
            return
        import kafka.errors

        try:
            self.producer.flush(timeout=timeout_s)
        except kafka.errors.KafkaTimeoutError as exc:
            self._failed(exc)
        finally:
            self.producer.close(timeout=5)
            self.producer = None
        if self.failed:
            raise ReplayError(
                f"{self.failed} record(s) were not acknowledged by the broker at "
                f"{self.bootstrap} ({self.first_failure})"
            )


# ------------------------------------------------------------------------------- the run
@dataclass
class ReplaySummary:
    """What a replay did (see :meth:`to_dict` for the fields)."""

    sent: int = 0
    scored: int = 0
    flagged: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    reasons: list[str] = field(default_factory=list)
    labels_fraud: int = 0
    labels_legit: int = 0
    labels_early: int = 0
    labelled_transactions: int = 0
    first_time: int | None = None
    last_time: int | None = None
    wall_seconds: float = 0.0
    held_seconds: float = 0.0

    @property
    def labels(self) -> int:
        """Labels published."""
        return self.labels_fraud + self.labels_legit

    @property
    def rate(self) -> float:
        """Transactions sent per wall-clock second, time held left out."""
        sending = self.wall_seconds - self.held_seconds
        return self.sent / sending if sending > 0 else 0.0

    def data_time(self) -> str:
        """The data time reached, ISO-8601 (``-`` before the first send)."""
        from fraud_detection.serving.mirror import iso_timestamp

        return "-" if self.last_time is None else iso_timestamp(self.last_time)

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready values."""
        from fraud_detection.serving.mirror import iso_timestamp

        return {
            "transactions_sent": self.sent,
            "scored": self.scored,
            "flagged": self.flagged,
            "rejected": dict(sorted(self.rejected.items())),
            "rejected_total": sum(self.rejected.values()),
            "rejection_examples": list(self.reasons),
            "labels_published": self.labels,
            "labels_fraud": self.labels_fraud,
            "labels_legit": self.labels_legit,
            "labels_published_early": self.labels_early,
            "labelled_transactions_published": self.labelled_transactions,
            "first_data_time": None if self.first_time is None else iso_timestamp(self.first_time),
            "last_data_time": None if self.last_time is None else iso_timestamp(self.last_time),
            "wall_seconds": round(self.wall_seconds, 3),
            "held_seconds": round(self.held_seconds, 3),
            "rate_per_s": round(self.rate, 1),
        }

    def render(self) -> str:
        """A few human-readable lines."""
        body = self.to_dict()
        rejected = ", ".join(f"{key}: {count}" for key, count in body["rejected"].items())
        lines = [
            f"sent {self.sent:,} transactions: {self.scored:,} scored, {self.flagged:,} flagged, "
            f"{body['rejected_total']:,} rejected" + (f" ({rejected})" if rejected else ""),
            f"labels published: {self.labels:,} ({self.labels_fraud:,} fraud, "
            f"{self.labels_legit:,} legit"
            + (f"; {self.labels_early:,} before due" if self.labels_early else "")
            + f"); labelled transactions published: {self.labelled_transactions:,}",
            f"data time {body['first_data_time'] or '-'} .. {body['last_data_time'] or '-'}; "
            f"{self.wall_seconds:.1f} s wall"
            + (f" ({self.held_seconds:.1f} s held)" if self.held_seconds else "")
            + f", {self.rate:,.1f} transactions/s",
        ]
        return "\n".join(lines)


def run_replay(
    data: ReplayData,
    scorer: ScoringClient,
    publisher: LabelPublisher | None,
    delay: int,
    batch: int = DEFAULT_BATCH,
    rate: float = 0.0,
    flush: bool = False,
    progress: Callable[[ReplaySummary], None] | None = None,
    summary: ReplaySummary | None = None,
    held: Callable[[], bool] | None = None,
) -> ReplaySummary:
    """Replay ``data`` through ``scorer``, publishing due labels with ``publisher`` (None: no
    labels); return the summary (``summary``, updated in place, when given).

    ``progress`` is called after every step. Rows ``prepare`` skipped count as rejected. While
    ``held()`` is true, nothing is sent or published: data time stands still (see
    :meth:`Pacer.hold`).
    """
    summary = summary or ReplaySummary()
    summary.rejected.update(data.skipped)
    summary.reasons.extend(data.examples[:MAX_REASONS])
    pacer = Pacer(rate)
    accepted = [False] * len(data)
    started = time.monotonic()
    try:
        for step in plan(data.times, delay, batch, flush=flush):
            if held is not None:
                summary.held_seconds += pacer.hold(held)
            if isinstance(step, Send):
                pacer.wait(step.start)
                result = scorer.score(data.instances[step.start : step.stop])
                summary.sent += step.stop - step.start
                for position, prediction in result.predictions.items():
                    accepted[step.start + position] = True
                    summary.scored += 1
                    summary.flagged += bool(prediction.get("is_fraud"))
                for position, (status, reason) in sorted(result.rejected.items()):
                    summary.rejected[str(status)] += 1
                    if len(summary.reasons) < MAX_REASONS:
                        tx_id = data.instances[step.start + position].get(TRANSACTION_ID)
                        summary.reasons.append(f"HTTP {status} {tx_id}: {reason}")
                if summary.first_time is None:
                    summary.first_time = data.times[step.start]
                summary.last_time = data.times[step.stop - 1]
            elif publisher is not None:
                for index in range(step.start, step.stop):
                    is_fraud = data.labels[index]
                    if is_fraud < 0 or not accepted[index]:
                        continue
                    instance = data.instances[index]
                    publisher.publish(
                        make_label(instance, data.times[index], is_fraud, delay), instance
                    )
                    if is_fraud:
                        summary.labels_fraud += 1
                    else:
                        summary.labels_legit += 1
                    summary.labels_early += step.early
                    summary.labelled_transactions += publisher.transactions_topic is not None
            summary.wall_seconds = time.monotonic() - started
            if progress is not None:
                progress(summary)
    finally:
        summary.wall_seconds = time.monotonic() - started
    return summary
