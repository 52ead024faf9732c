"""The transformer's live state survives a crash: a real transformer process checkpoints it,
is killed with SIGKILL, restarts from the newest checkpoint and continues exactly from there."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from fraud_detection.bundle import FEATURE_STATE
from fraud_detection.features import MICROS_PER_SECOND, OnlineFeatureState
from fraud_detection.serving.checkpoint import load_latest
from fraud_detection.serving.launcher import ServingStack, StackConfig
from fraud_detection.serving.mirror import iso_timestamp
from support.serving import STARTUP_TIMEOUT_S
from support.waiting import wait_until

pytestmark = pytest.mark.integration


def transactions(clock: int, count: int, first: int = 0) -> list[dict[str, Any]]:
    """``count`` transactions of one card, a minute apart, after ``clock``."""
    return [
        {
            "transaction_id": f"crash-{number}",
            "card_id": "card-crash",
            "merchant_id": "merchant-crash",
            "amt": 20.0 + number,
            "timestamp": iso_timestamp(clock + (number + 1) * 60 * MICROS_PER_SECOND),
        }
        for number in range(first, first + count)
    ]


def checkpointed(state_dir: Path, transaction_id: str) -> bool:
    """Whether the newest checkpoint in ``state_dir`` has seen ``transaction_id``."""
    checkpoint = load_latest(state_dir)
    return checkpoint is not None and transaction_id in checkpoint.seen


def test_a_killed_transformer_resumes_from_its_checkpoint(
    serving_bundle: Path, tmp_path: Path
) -> None:
    snapshot = OnlineFeatureState.load(serving_bundle / FEATURE_STATE)
    assert snapshot.last_timestamp_micros is not None
    before_crash = transactions(snapshot.last_timestamp_micros, 6)
    after_restart = transactions(snapshot.last_timestamp_micros, 2, first=6)
    state_dir = tmp_path / "state"
    config = StackConfig(
        model_dir=serving_bundle,
        mirror=False,
        collocated=True,
        log_dir=tmp_path / "logs",
        startup_timeout_s=STARTUP_TIMEOUT_S,
        transformer_args=[
            "--clock",
            "event",
            "--state_dir",
            str(state_dir),
            "--checkpoint_interval",
            "0.2",
        ],
    )
    with ServingStack(config) as stack, httpx.Client(timeout=30) as client:
        for tx in before_crash:
            assert client.post(stack.predict_url, json={"instances": [tx]}).status_code == 200
        last = before_crash[-1]["transaction_id"]
        wait_until(lambda: checkpointed(state_dir, last), f"a checkpoint with {last}", poll_s=0.05)
        assert stack.transformer is not None
        stack.transformer.signal(signal.SIGKILL)
        assert stack.transformer.proc is not None
        stack.transformer.proc.wait(timeout=60)
        stack.transformer.start().wait_ready(STARTUP_TIMEOUT_S)
        # A retry of a transaction from before the crash is recognised: the same answer...
        retried = client.post(stack.predict_url, json={"instances": [before_crash[2]]})
        assert retried.status_code == 200
        # ...and another payload under its id is still a conflict.
        conflict = client.post(
            stack.predict_url, json={"instances": [{**before_crash[2], "amt": 1.0}]}
        )
        assert conflict.status_code == 409, conflict.text
        for tx in after_restart:
            assert client.post(stack.predict_url, json={"instances": [tx]}).status_code == 200
    # Stopping wrote a final checkpoint: the state is that of an uninterrupted transformer.
    final = load_latest(state_dir)
    assert final is not None
    expected = OnlineFeatureState.load(serving_bundle / FEATURE_STATE)
    for tx in before_crash + after_restart:
        expected.process_transaction(tx)
    assert final.features.to_dict() == expected.to_dict()
    assert list(final.seen)[-8:] == [tx["transaction_id"] for tx in before_crash + after_restart]
