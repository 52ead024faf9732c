"""A real S3-protocol server (moto's) on a free loopback port, for the ``s3://`` tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def s3_server() -> Iterator[str]:
    """Run the server while the block runs; its endpoint URL (``http://127.0.0.1:PORT``).

    Skips the test with the reason when ``s3fs`` or ``moto[server]`` is not installed.
    """
    pytest.importorskip("s3fs", reason="s3fs is not installed (the pipeline extra's s3://)")
    moto_server = pytest.importorskip(
        "moto.server", reason="moto is not installed (dev dependency: a real S3 server)"
    )
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextmanager
def s3_bucket(bucket: str = "mlpipeline") -> Iterator[tuple[str, dict[str, str]]]:
    """A bucket on a real S3 server while the block runs: (``s3://bucket``, the environment
    that reaches it, as a pipeline pod gets it)."""
    from fraud_detection.training.storage import filesystem

    with s3_server() as endpoint:
        environ = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ENDPOINT_URL_S3": endpoint,
            "AWS_REGION": "eu-west-1",
        }
        fs, _ = filesystem(f"s3://{bucket}", environ)
        fs.makedirs(bucket, exist_ok=True)  # moto's state outlives one server
        yield f"s3://{bucket}", environ
