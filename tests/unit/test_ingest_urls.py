"""Ingest reads fsspec URLs (``memory://``, ``file://``, ``s3://``…) as well as plain paths.

Real filesystems throughout: fsspec's in-memory and local filesystems, and a real S3-protocol
server (moto) when ``moto`` and ``s3fs`` are installed (skipped otherwise).
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pandas as pd
import pytest

from fraud_detection.data.files import write_transactions
from fraud_detection.schema import CARD_ID, TRANSACTION_ID
from fraud_detection.training.ingest import IngestError, ingest
from fraud_detection.training.steps import ingest_step
from fraud_detection.training.storage import is_url, normalize_url
from support.s3 import s3_server


@pytest.fixture
def memory_dir() -> Iterator[str]:
    """A fresh directory in fsspec's in-memory filesystem (removed afterwards)."""
    fs = fsspec.filesystem("memory")
    root = f"/ingest-{uuid.uuid4().hex}"
    fs.mkdir(root)
    yield root
    fs.rm(root, recursive=True)


def put(local: Path, url: str) -> str:
    """Copy a local file to ``url``; return the URL."""
    with fsspec.open(url, "wb") as out:
        out.write(local.read_bytes())
    return url


def test_urls_are_told_from_paths() -> None:
    assert is_url("s3://bucket/x.csv") and is_url("memory://x") and is_url("file:///tmp/x")
    assert not is_url("/data/x.csv") and not is_url("data/*.csv.gz") and not is_url("C.csv")
    assert normalize_url("minio://mlpipeline/x") == "s3://mlpipeline/x"


def test_a_glob_of_urls_reads_csv_gz_and_parquet_with_ids_as_text(
    transactions: pd.DataFrame, memory_dir: str, tmp_path: Path
) -> None:
    first, second = transactions.iloc[:3], transactions.iloc[3:]
    put(write_transactions(first, tmp_path / "a.csv.gz"), f"memory://{memory_dir}/a.csv.gz")
    put(write_transactions(second, tmp_path / "b.parquet"), f"memory://{memory_dir}/b.parquet")
    frame, source = ingest([f"memory://{memory_dir}/*"])
    assert source == f"memory://{memory_dir}/a.csv.gz, memory://{memory_dir}/b.parquet"
    assert frame[TRANSACTION_ID].tolist() == transactions[TRANSACTION_ID].tolist()
    assert frame[CARD_ID].tolist()[:3] == ["card-000123", "card-000124", "007"]  # not 7


def test_urls_and_local_files_are_read_in_the_order_given(
    transactions: pd.DataFrame, memory_dir: str, tmp_path: Path
) -> None:
    local = write_transactions(transactions.iloc[:2], tmp_path / "local.csv")
    remote = put(
        write_transactions(transactions.iloc[2:], tmp_path / "remote.csv"),
        f"memory://{memory_dir}/remote.csv",
    )
    frame, source = ingest([remote, str(local)])
    assert frame[TRANSACTION_ID].tolist() == ["t2", "t3", "t4", "0042", "t1"]
    assert source == f"{remote}, {local}"


def test_file_urls_go_through_the_pipeline_step(transactions: pd.DataFrame, tmp_path: Path) -> None:
    local = write_transactions(transactions, tmp_path / "in" / "transactions.csv.gz")
    summary = ingest_step([local.as_uri()], "", "", 0, tmp_path / "raw.parquet")
    assert summary["rows"] == 5
    assert summary["source"] == local.as_uri()
    written = pd.read_parquet(tmp_path / "raw.parquet")
    assert written[TRANSACTION_ID].tolist() == transactions[TRANSACTION_ID].tolist()


def test_an_absent_object_and_an_empty_pattern_are_named(memory_dir: str) -> None:
    missing = f"memory://{memory_dir}/missing.csv"
    with pytest.raises(IngestError, match=f"^{missing}: no such object$"):
        ingest([missing])
    with pytest.raises(IngestError, match=r"/\*\.parquet: the pattern matches no object$"):
        ingest([f"memory://{memory_dir}/*.parquet"])


def test_an_unknown_schema_or_file_type_names_the_object(memory_dir: str) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{memory_dir}/other.csv", b"a,b\n1,2\n")
    fs.pipe(f"{memory_dir}/notes.txt", b"hello")
    with pytest.raises(IngestError, match=r"other\.csv: unknown schema"):
        ingest([f"memory://{memory_dir}/other.csv"])
    with pytest.raises(IngestError, match=r"notes\.txt: unsupported file type"):
        ingest([f"memory://{memory_dir}/notes.txt"])


def _a_missing_protocol_package() -> tuple[str, str] | None:
    for protocol, package in (("s3", "s3fs"), ("gs", "gcsfs"), ("az", "adlfs")):
        if importlib.util.find_spec(package) is None:
            return protocol, package
    return None


def test_a_protocol_without_its_package_names_the_package() -> None:
    missing = _a_missing_protocol_package()
    if missing is None:
        pytest.skip("s3fs, gcsfs and adlfs are all installed: no missing package to name")
    protocol, package = missing
    url = f"{protocol}://bucket/transactions.csv"
    with pytest.raises(IngestError, match=f"^{url}: {protocol}:// needs the {package} package"):
        ingest([url])


def test_unknown_and_unreadable_protocols_are_refused_by_name() -> None:
    with pytest.raises(IngestError, match=r"^nosuch://x/y\.csv: unknown URL protocol nosuch://$"):
        ingest(["nosuch://x/y.csv"])
    with pytest.raises(IngestError, match=r"^pvc://claim/y\.csv: pvc:// is not readable"):
        ingest(["pvc://claim/y.csv"])


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real S3-protocol server, set in the environment the way the pipeline pods get it; its
    endpoint URL."""
    with s3_server() as endpoint:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "eu-west-1",
            "AWS_ENDPOINT_URL": endpoint,
        }.items():
            monkeypatch.setenv(name, value)
        yield endpoint


def test_s3_objects_are_ingested(
    s3_endpoint: str, transactions: pd.DataFrame, tmp_path: Path
) -> None:
    import s3fs

    from fraud_detection.training.storage import s3_options

    fs = s3fs.S3FileSystem(**s3_options())
    fs.mkdir("data")
    local = write_transactions(transactions, tmp_path / "t.csv.gz")
    fs.pipe("data/2026/t.csv.gz", local.read_bytes())
    frame, source = ingest(["s3://data/2026/*.csv.gz"])
    assert source == "s3://data/2026/t.csv.gz"
    assert frame[CARD_ID].tolist() == transactions[CARD_ID].tolist()
    with pytest.raises(IngestError, match=r"^s3://data/2026/absent\.csv: no such object$"):
        ingest(["s3://data/2026/absent.csv"])
