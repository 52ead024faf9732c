"""The drift monitor consumes what the transformer mirrors to Kafka, on the kind cluster."""

from __future__ import annotations

import httpx
import pytest
from e2e_requests import predict_path, transaction
from prometheus_client.parser import text_string_to_metric_families

from support.waiting import wait_until

pytestmark = pytest.mark.e2e

#: The monitor's counter of records read from the mirror topic (monitoring/metrics.py).
CONSUMED = "fraud_monitor_records_consumed_total"
#: Mirroring is asynchronous and the monitor polls: a generous bound, not an expected time.
DEADLINE_S = 300.0


def consumed(monitor: httpx.Client) -> float:
    """The monitor's mirrored records consumed so far, over every partition."""
    response = monitor.get("/metrics")
    response.raise_for_status()
    return sum(
        sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == CONSUMED
    )


def test_the_monitor_consumes_the_mirrored_records_of_scored_transactions(
    transformer: httpx.Client, monitor: httpx.Client, model_name: str
) -> None:
    before = consumed(monitor)
    batch = [transaction(amount=10.0 + card, card=100 + card) for card in range(20)]
    response = transformer.post(predict_path(model_name), json={"instances": batch})
    assert response.status_code == 200, response.text

    wait_until(
        lambda: consumed(monitor) >= before + len(batch),
        f"{CONSUMED} to grow by {len(batch)} from {before:g}",
        timeout_s=DEADLINE_S,
        poll_s=1.0,
    )
