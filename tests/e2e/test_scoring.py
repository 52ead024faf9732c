"""Scoring through the InferenceService's entry (the transformer) on the kind cluster."""

from __future__ import annotations

import math

import httpx
import pytest
from e2e_requests import predict_path, transaction

from fraud_detection.schema import AMOUNT, CARD_ID, DEFAULT_THRESHOLD

pytestmark = pytest.mark.e2e


def test_the_model_is_ready(transformer: httpx.Client, model_name: str) -> None:
    response = transformer.get(f"/v1/models/{model_name}")
    assert response.status_code == 200, response.text
    assert response.json().get("ready") is True


def test_a_valid_transaction_gets_a_score_and_a_decision_at_the_threshold(
    transformer: httpx.Client, model_name: str
) -> None:
    sent = transaction()
    response = transformer.post(predict_path(model_name), json={"instances": [sent]})

    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    assert prediction["transaction_id"] == sent["transaction_id"]
    probability = prediction["fraud_probability"]
    assert isinstance(probability, float) and math.isfinite(probability)
    assert 0.0 <= probability <= 1.0
    assert prediction["threshold"] == DEFAULT_THRESHOLD == 0.1
    assert prediction["is_fraud"] is (probability >= DEFAULT_THRESHOLD)


def test_the_service_serves_the_model_the_pipeline_deployed(
    transformer: httpx.Client, model_name: str, deployed_version: str
) -> None:
    batch = [transaction(amount=amount, card=card) for card, amount in enumerate((0.0, 7.5, 2500))]
    response = transformer.post(predict_path(model_name), json={"instances": batch})

    assert response.status_code == 200, response.text
    versions = {prediction["model_version"] for prediction in response.json()["predictions"]}
    assert versions == {deployed_version}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({AMOUNT: -3}, f"instances[0].{AMOUNT}"),
        ({AMOUNT: "12.5"}, f"instances[0].{AMOUNT}"),
        ({CARD_ID: None}, f"instances[0].{CARD_ID}"),
    ],
    ids=["negative-amount", "amount-as-text", "card-id-null"],
)
def test_a_malformed_transaction_gets_a_4xx_naming_the_field(
    transformer: httpx.Client, model_name: str, change: dict[str, object], field: str
) -> None:
    response = transformer.post(
        predict_path(model_name), json={"instances": [transaction(**change)]}
    )

    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    body = response.json()
    assert body["field"] == field, body
    assert body["error"].startswith(f"{field}:"), body
    assert body["reason"], body
