"""Fuzzing the real serving stack: over ten thousand malformed requests of many kinds
(``tests/support/fuzz.py``, seeded and deterministic), interleaved with valid held-out
transactions in time order, sent over keep-alive connections to the transformer (v1 and v2)
and a few hundred straight at the predictor.

The run fails on any 5xx, any connection error or reset, any 2xx to a request that had to be
refused, any refusal of a valid transaction, an error body not in the project's format, and on
any state change caused by a rejected request: the transformer's final checkpoint must equal
the bundle's feature-state snapshot after exactly the transactions answered 200, in the order
they were sent (an identical retry counted once). The figures (requests, answers per status
code, failures by kind) are printed and attached to the assertion message.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from fraud_detection.bundle import FEATURE_STATE
from fraud_detection.features import OnlineFeatureState, timestamp_to_micros
from fraud_detection.schema import TIMESTAMP
from fraud_detection.serving.checkpoint import load_latest
from fraud_detection.serving.demo import to_instance
from fraud_detection.serving.launcher import ServingStack, StackConfig
from support.bundles import SplitData
from support.fuzz import (
    ACCEPT,
    CONFLICT,
    PREDICTOR,
    RETRY,
    Absorbed,
    FuzzConfig,
    FuzzGenerator,
    FuzzRequest,
)
from support.serving import STARTUP_TIMEOUT_S

pytestmark = pytest.mark.integration

#: Largest error body accepted (an error never echoes large parts of the input).
MAX_ERROR_BYTES = 8_192
#: Examples kept per failure kind in the report.
EXAMPLES = 3
CHUNK = 64 * 1024


@dataclass
class Answer:
    """What the server answered to one request (``status`` None: no answer)."""

    request: FuzzRequest
    status: int | None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None


# ---------------------------------------------------------------- sending
def _chunks(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), CHUNK):
        yield body[start : start + CHUNK]


def send(client: httpx.Client, base_url: str, request: FuzzRequest) -> Answer:
    """Send one request on a keep-alive client; a transport error is an answer with no status."""
    content = _chunks(request.body) if request.chunked else request.body
    try:
        response = client.request(
            request.method, base_url + request.path, headers=request.headers, content=content
        )
    except httpx.TransportError as exc:
        return Answer(request, None, error=f"{type(exc).__name__}: {exc}")
    return Answer(request, response.status_code, response.content, dict(response.headers))


def send_raw(host: str, port: int, request: FuzzRequest) -> Answer:
    """Send raw bytes on a new connection and read the answer until the server closes it."""
    assert request.raw is not None
    try:
        with socket.create_connection((host, port), timeout=30) as connection:
            connection.sendall(request.raw)
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
    except OSError as exc:
        return Answer(request, None, error=f"{type(exc).__name__}: {exc}")
    head, _, body = answer.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return Answer(request, None, answer[:200], error="no HTTP answer")
    lines = head.decode("latin-1").split("\r\n")[1:]
    headers = dict(line.lower().split(": ", 1) for line in lines if ": " in line)
    return Answer(request, status, body, headers)


def run(stack: ServingStack, requests: Sequence[FuzzRequest]) -> list[Answer]:
    """Send every request in order; transformer and predictor each on one keep-alive client."""
    assert stack.transformer is not None and stack.predictor is not None
    answers = []
    timeout = httpx.Timeout(30.0)
    with httpx.Client(timeout=timeout) as transformer, httpx.Client(timeout=timeout) as predictor:
        for request in requests:
            if request.raw is not None:
                server = stack.predictor if request.target == PREDICTOR else stack.transformer
                answers.append(send_raw(server.host, server.port, request))
            elif request.target == PREDICTOR:
                answers.append(send(predictor, stack.predictor.url, request))
            else:
                answers.append(send(transformer, stack.transformer.url, request))
    return answers


# ---------------------------------------------------------------- checking
def is_project_error(answer: Answer) -> bool:
    """Whether the body is ``{"error", "field", "reason", "errors": [{"field", "reason"}]}``."""
    try:
        body = json.loads(answer.body)
    except ValueError:
        return False
    return (
        isinstance(body, dict)
        and set(body) == {"error", "field", "reason", "errors"}
        and isinstance(body["errors"], list)
        and bool(body["errors"])
        and all(isinstance(e, dict) and set(e) == {"field", "reason"} for e in body["errors"])
    )


def problems_of(answer: Answer) -> list[str]:
    """The failure kinds of one answer (empty when it is right)."""
    request, status = answer.request, answer.status
    if status is None:
        return ["connection error or reset"]
    found = []
    if status >= 500:
        found.append(f"{status} answer")
    if request.malformed and 200 <= status < 300:
        found.append("2xx to a request that had to be refused")
    if request.expect in (ACCEPT, RETRY) and status != 200:
        found.append("valid transaction not answered 200")
    if request.expect == CONFLICT and status != 409 and not 200 <= status < 300:
        found.append("conflict not answered 409")
    if 400 <= status < 600:
        if not is_project_error(answer):
            found.append("error body not in the project's format")
        if len(answer.body) > MAX_ERROR_BYTES:
            found.append("error body echoes too much")
    if status == 500 and answer.headers.get("connection", "").lower() != "close":
        found.append("500 without Connection: close")
    return found


@dataclass
class Expected:
    """The feature state the transformer must have, from the answers alone."""

    state: OnlineFeatureState
    absorbed: int = 0
    retries: int = 0
    unknown: list[str] = field(default_factory=list)
    seen: dict[str, tuple[str, str, float, int]] = field(default_factory=dict)

    def apply(self, answer: Answer) -> None:
        """Absorb what a request answered 200 carried (a retry counts once)."""
        request = answer.request
        if answer.status != 200 or request.target == PREDICTOR:
            return
        if request.transactions is None:
            self.unknown.append(request.describe(120))
            return
        for tx in request.transactions:
            self._absorb(tx, request)

    def _absorb(self, tx: Absorbed, request: FuzzRequest) -> None:
        known = self.seen.get(tx.transaction_id)
        if known == tx.payload:
            self.retries += 1
            return
        if known is not None:
            self.unknown.append(f"200 to another payload under a known id: {request.describe(120)}")
            return
        self.seen[tx.transaction_id] = tx.payload
        self.state.process(tx.card_id, tx.merchant_id, tx.amount, tx.timestamp_micros)
        self.absorbed += 1


@dataclass
class Report:
    """Figures and failures of a run."""

    requests: int = 0
    malformed: int = 0
    predictor: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    failures: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, answer: Answer) -> None:
        """Count one answer and its failures."""
        request = answer.request
        self.requests += 1
        self.malformed += request.malformed
        self.predictor += request.target == PREDICTOR
        self.statuses[str(answer.status) if answer.status is not None else "no answer"] += 1
        for problem in problems_of(answer):
            self.fail(problem, request.kind, self._example(answer))

    def fail(self, problem: str, kind: str, example: str) -> None:
        """Record a failure of ``kind``."""
        self.failures[problem][kind] += 1
        if len(self.examples[problem]) < EXAMPLES:
            self.examples[problem].append(example)

    @staticmethod
    def _example(answer: Answer) -> str:
        reply = answer.error or answer.body[:200].decode("utf-8", "backslashreplace")
        return f"{answer.request.describe()}\n        -> {answer.status}: {reply}"

    @property
    def failed(self) -> bool:
        """Whether anything failed."""
        return bool(self.failures)

    def text(self) -> str:
        """The figures and the failures, grouped by kind, with examples."""
        statuses = ", ".join(f"{code}: {count}" for code, count in sorted(self.statuses.items()))
        lines = [
            f"fuzz: {self.requests} requests in {self.seconds:.1f} s ({self.malformed} malformed, "
            f"{self.predictor} to the predictor); answers by status: {statuses}",
            *self.notes,
        ]
        for problem, kinds in sorted(self.failures.items()):
            total = sum(kinds.values())
            by_kind = ", ".join(f"{kind} x{count}" for kind, count in kinds.most_common())
            lines.append(f"FAILED {problem}: {total} requests: {by_kind}")
            lines += [f"    e.g. {example}" for example in self.examples[problem]]
        return "\n".join(lines)


def check_state(report: Report, expected: Expected, state_dir: Path) -> None:
    """Compare the transformer's final checkpoint with the expected state."""
    report.notes.append(
        f"state: {expected.absorbed} transactions absorbed, {expected.retries} retries counted once"
    )
    if expected.unknown:
        report.notes.append(
            f"state check imprecise: {len(expected.unknown)} requests answered 200 carry "
            "transactions that cannot be read, so a state difference may come from them"
        )
    for note in expected.unknown[:EXAMPLES]:
        report.notes.append(f"    e.g. a 200 to {note}")
    checkpoint = load_latest(state_dir)
    if checkpoint is None:
        report.fail("no final checkpoint", "state", f"nothing readable in {state_dir}")
    elif checkpoint.features.to_dict() != expected.state.to_dict():
        report.fail(
            "state differs from the expected one",
            "state",
            describe_difference(checkpoint.features.to_dict(), expected.state.to_dict()),
        )


def describe_difference(actual: dict[str, Any], expected: dict[str, Any]) -> str:
    """Where two feature-state documents first differ."""
    for key in sorted(set(actual) | set(expected)):
        if actual.get(key) != expected.get(key):
            left, right = actual.get(key), expected.get(key)
            if isinstance(left, dict) and isinstance(right, dict):
                extra = sorted(set(left) - set(right))[:5]
                missing = sorted(set(right) - set(left))[:5]
                changed = [k for k in left if k in right and left[k] != right[k]][:5]
                return f"{key}: unexpected {extra}, missing {missing}, changed {changed}"
            return f"{key}: {str(left)[:200]} != {str(right)[:200]}"
    return "no difference found"


# ---------------------------------------------------------------- the test
def valid_instances(data: SplitData) -> list[dict[str, Any]]:
    """The held-out transactions as scoring instances, in time order."""
    ordered = data.held_out.sort_values(TIMESTAMP, kind="stable")
    return [to_instance(row) for row in ordered.to_dict("records")]


def test_fuzz_the_serving_stack(
    serving_bundle: Path, serving_data: SplitData, tmp_path: Path
) -> None:
    clock = timestamp_to_micros(serving_data.train[TIMESTAMP].max().isoformat())
    # FRAUD_FUZZ_SEED draws another set of requests (the suite uses the fixed default).
    seed = int(os.environ.get("FRAUD_FUZZ_SEED", FuzzConfig.seed))
    requests = FuzzGenerator(FuzzConfig(seed=seed), valid_instances(serving_data), clock).generate()
    assert sum(request.malformed for request in requests) >= 10_000
    assert sum(request.target == PREDICTOR for request in requests) >= 300
    assert sum(request.expect == ACCEPT for request in requests) >= 500

    state_dir = tmp_path / "state"
    config = StackConfig(
        model_dir=serving_bundle,
        startup_timeout_s=STARTUP_TIMEOUT_S,
        mirror=False,
        log_dir=tmp_path / "logs",
        transformer_args=[
            "--clock",
            "event",
            "--state_dir",
            str(state_dir),
            "--checkpoint_interval",
            "3600",
        ],
    )
    report = Report()
    expected = Expected(OnlineFeatureState.load(serving_bundle / FEATURE_STATE))
    with ServingStack(config) as stack:
        started = time.perf_counter()
        answers = run(stack, requests)
        report.seconds = time.perf_counter() - started
    for answer in answers:
        report.add(answer)
        expected.apply(answer)
    check_state(report, expected, state_dir)

    text = report.text()
    print(text)
    assert report.requests == len(requests)
    assert not report.failed, text
