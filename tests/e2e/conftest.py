"""The kind end-to-end suite: skipped unless a cluster is configured.

``scripts/kind-e2e.sh`` deploys everything on a kind cluster, port-forwards the transformer and
the monitor, and runs ``pytest -m e2e tests/e2e`` with these variables:

* ``FRAUD_E2E_TRANSFORMER_URL``: the InferenceService's entry (``svc/fraud-detector-transformer``);
  without it every test here is skipped;
* ``FRAUD_E2E_MONITOR_URL``: the monitor's metrics server (``svc/fraud-monitor``, port 9108);
* ``FRAUD_E2E_MODEL_NAME``: the served model's name (default ``fraud-detector``);
* ``FRAUD_E2E_MODEL_VERSION``: the model version the pipeline run deployed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

TRANSFORMER_URL_ENV = "FRAUD_E2E_TRANSFORMER_URL"
MONITOR_URL_ENV = "FRAUD_E2E_MONITOR_URL"
MODEL_NAME_ENV = "FRAUD_E2E_MODEL_NAME"
MODEL_VERSION_ENV = "FRAUD_E2E_MODEL_VERSION"
SKIP_REASON = "no cluster configured: run scripts/kind-e2e.sh"
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip this directory's tests, with the reason, when no transformer URL is given."""
    if os.environ.get(TRANSFORMER_URL_ENV):
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(skip)


def _required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        pytest.fail(f"{name} is not set; scripts/kind-e2e.sh sets it", pytrace=False)
    return value.rstrip("/")


@pytest.fixture(scope="session")
def model_name() -> str:
    """The served model's name."""
    return os.environ.get(MODEL_NAME_ENV, "").strip() or "fraud-detector"


@pytest.fixture(scope="session")
def deployed_version() -> str:
    """The model version the pipeline run deployed (what the script read from the service)."""
    return _required(MODEL_VERSION_ENV)


@pytest.fixture(scope="session")
def transformer() -> Iterator[httpx.Client]:
    """An HTTP client on the transformer's port-forwarded URL."""
    with httpx.Client(base_url=_required(TRANSFORMER_URL_ENV), timeout=30.0) as client:
        yield client


@pytest.fixture(scope="session")
def monitor() -> Iterator[httpx.Client]:
    """An HTTP client on the monitor's port-forwarded metrics URL."""
    with httpx.Client(base_url=_required(MONITOR_URL_ENV), timeout=30.0) as client:
        yield client
