"""The versioned model store: bundles copied in with their manifest last (``storage.put_tree``,
``deploy.publish_bundle``), and the drift monitor's URL locator (``StorageLocator``) that reads
a version's manifest and drift reference back, on a real S3 server (moto's, on loopback) and on
``file://`` and ``memory://``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fraud_detection.bundle import (
    DRIFT_REFERENCE,
    MANIFEST,
    MODEL_JOBLIB,
    Manifest,
    read_manifest,
    safe_version,
    write_manifest,
)
from fraud_detection.features import FEATURE_NAMES
from fraud_detection.monitoring.performance import BundleBaselines
from fraud_detection.monitoring.reference import (
    ReferenceCache,
    RegistryLocator,
    StorageLocator,
    TemplateLocator,
    UnknownVersionError,
    bundle_locator,
)
from fraud_detection.training.deploy import DeployError, publish_bundle, version_uri
from fraud_detection.training.storage import (
    StorageError,
    StorageNotFoundError,
    fetch_tree,
    put_tree,
    read_object,
)
from support.s3 import s3_bucket

ROWS = 12


def make_bundle(directory: Path, version: str, seed: int = 0) -> Path:
    """A checksummed bundle with a model file, a drift reference and baseline metrics."""
    directory.mkdir(parents=True)
    (directory / MODEL_JOBLIB).write_bytes(f"model {version} {seed}".encode())
    rng = np.random.default_rng(seed)
    np.savez_compressed(
        directory / DRIFT_REFERENCE,
        features=rng.normal(size=(ROWS, len(FEATURE_NAMES))),
        feature_names=np.array(FEATURE_NAMES),
    )
    manifest = Manifest(
        version,
        list(FEATURE_NAMES),
        0.1,
        created_at="2026-03-01T00:00:00+00:00",
        metrics={"recall": 0.8, "f1": 0.5, "precision": 0.4},
    )
    write_manifest(directory, manifest)
    return directory


@pytest.fixture(scope="module")
def s3_store() -> Iterator[tuple[str, dict[str, str]]]:
    """A bucket on a real S3 server: (its ``s3://`` root, the environment that reaches it)."""
    with s3_bucket() as store:
        yield store


@pytest.fixture(params=["s3", "file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, str] | None]:
    """A fresh model store root (a URL) on each backend, and the environment it needs."""
    unique = uuid.uuid4().hex[:8]
    if request.param == "s3":
        root, environ = request.getfixturevalue("s3_store")
        return f"{root}/fraud-detection/models-{unique}", environ
    if request.param == "file":
        return (tmp_path / "store").as_uri(), None
    return f"memory://store-{unique}/models", None


# ------------------------------------------------------------------------------ put_tree
def test_put_tree_writes_the_named_files_last_and_fetch_tree_reads_them_back(
    store: tuple[str, dict[str, str] | None], tmp_path: Path
) -> None:
    root, environ = store
    bundle = make_bundle(tmp_path / "bundle", "v1")
    written = put_tree(bundle, f"{root}/v1", environ, last=(MANIFEST,))
    assert len(written) == 3
    assert written[-1].endswith(f"/v1/{MANIFEST}")  # the manifest is written after the rest
    back = fetch_tree(f"{root}/v1", tmp_path / "back", environ)
    for name in (MODEL_JOBLIB, DRIFT_REFERENCE, MANIFEST):
        assert (back / name).read_bytes() == (bundle / name).read_bytes(), name
    only = fetch_tree(f"{root}/v1", tmp_path / "only", environ, include=[MANIFEST])
    assert sorted(p.name for p in only.iterdir()) == [MANIFEST]
    assert read_object(f"{root}/v1/{MANIFEST}", environ) == (bundle / MANIFEST).read_bytes()
    assert read_object(f"{root}/v1/nothing.json", environ) is None


def test_absent_objects_are_not_found_and_a_missing_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageNotFoundError, match="no such object or prefix"):
        fetch_tree((tmp_path / "nothing").as_uri(), tmp_path / "out")
    make_bundle(tmp_path / "b", "v1")
    with pytest.raises(StorageNotFoundError, match=f"no {DRIFT_REFERENCE}.zip"):
        fetch_tree((tmp_path / "b").as_uri(), tmp_path / "o", include=[f"{DRIFT_REFERENCE}.zip"])
    with pytest.raises(StorageError, match="not a directory"):
        put_tree(tmp_path / "absent", "memory://x/y")


# ------------------------------------------------------------------------ publish_bundle
def test_a_bundle_is_published_under_its_version_once(
    store: tuple[str, dict[str, str] | None], tmp_path: Path
) -> None:
    root, environ = store
    bundle = make_bundle(tmp_path / "bundle", "20260301T000000Z-aaaa1111")
    uri, action = publish_bundle(bundle, root, environ)
    assert (uri, action) == (f"{root}/20260301T000000Z-aaaa1111/", "copied")
    assert publish_bundle(bundle, root + "/", environ) == (uri, "exists")
    copy = fetch_tree(uri, tmp_path / "copy", environ)
    assert read_manifest(copy) == read_manifest(bundle)
    other = make_bundle(tmp_path / "other", "20260301T000000Z-aaaa1111", seed=1)
    with pytest.raises(DeployError, match=r"already holds another bundle .* never overwritten"):
        publish_bundle(other, root, environ)


def test_a_half_copied_version_is_copied_again(tmp_path: Path) -> None:
    root = (tmp_path / "store").as_uri()
    bundle = make_bundle(tmp_path / "bundle", "v1")
    # An earlier copy that stopped before its manifest: not complete, so not "exists".
    put_tree(bundle, f"{root}/v1", last=(MANIFEST,))
    (tmp_path / "store" / "v1" / MANIFEST).unlink()
    assert publish_bundle(bundle, root)[1] == "copied"
    assert (tmp_path / "store" / "v1" / MANIFEST).is_file()


def test_the_store_uri_must_be_a_url_and_minio_is_s3() -> None:
    assert version_uri("minio://mlpipeline/models/", "v1") == "s3://mlpipeline/models/v1/"
    for bad, message in (
        ("/var/models", "must be a URL"),
        ("", "is empty"),
    ):
        with pytest.raises(DeployError, match=f"models_uri: {message}"):
            version_uri(bad, "v1")
    # One rule with the monitor's locators: a version they could not look up is not published.
    for bad_version in ("a/b", "..", "v..1", "v 1", "-v1"):
        assert not safe_version(bad_version)
        with pytest.raises(DeployError, match="model_version"):
            version_uri("s3://b/m", bad_version)


# ----------------------------------------------------------------------- the URL locator
def test_the_url_locator_fetches_the_reference_and_manifest_once(
    store: tuple[str, dict[str, str] | None], tmp_path: Path
) -> None:
    root, environ = store
    bundle = make_bundle(tmp_path / "bundle", "v1")
    publish_bundle(bundle, root, environ)
    locator = bundle_locator(f"{root}/{{version}}", cache_dir=tmp_path / "cache", environ=environ)
    assert isinstance(locator, StorageLocator)
    found = locator.locate("v1")
    assert found == tmp_path / "cache" / "v1"
    assert sorted(p.name for p in found.iterdir()) == [DRIFT_REFERENCE, MANIFEST]  # no models
    reference = ReferenceCache(locator).get("v1")
    assert reference.rows == ROWS and reference.feature_names == tuple(FEATURE_NAMES)
    baseline = BundleBaselines(locator)("v1")
    assert baseline is not None
    # Once per version: the copy serves later lookups, even with the store gone.
    from fraud_detection.training.storage import filesystem

    fs, path = filesystem(f"{root}/v1", environ)
    fs.rm(path, recursive=True)
    assert locator.locate("v1") == found
    assert StorageLocator(f"{root}/{{version}}", tmp_path / "cache2", environ).locate("v1") is None


def test_an_absent_or_incomplete_version_is_unknown_and_found_once_published(
    tmp_path: Path,
) -> None:
    root = f"memory://unknown-{uuid.uuid4().hex[:8]}/models"
    now = [0.0]
    locator = StorageLocator(f"{root}/{{version}}", tmp_path / "cache")
    cache = ReferenceCache(locator, retry_s=30, clock=lambda: now[0])
    for name in ("v2", "../v2", ".v2"):
        assert locator.locate(name) is None, name
    with pytest.raises(UnknownVersionError, match="'v2': no bundle found"):
        cache.get("v2")
    bundle = make_bundle(tmp_path / "bundle", "v2")
    put_tree(bundle, f"{root}/v2", last=(MANIFEST,))
    from fraud_detection.training.storage import filesystem

    fs, path = filesystem(f"{root}/v2/{MANIFEST}")
    fs.rm(path)  # still being copied: its manifest is not there yet
    now[0] = 31.0
    with pytest.raises(UnknownVersionError, match="no bundle found"):
        cache.get("v2")
    assert not (tmp_path / "cache" / "v2").exists()
    publish_bundle(bundle, root)
    now[0] = 62.0
    assert cache.get("v2").rows == ROWS


def test_a_storage_error_is_logged_and_retried_on_a_later_lookup(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "v3").write_text("not a bundle directory")  # an object where a prefix should be
    now = [0.0]
    locator = StorageLocator(store.as_uri() + "/{version}", tmp_path / "cache")
    with pytest.raises(StorageError, match="unexpected object"):
        locator.locate("v3")
    cache = ReferenceCache(locator, retry_s=30, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING), pytest.raises(UnknownVersionError, match="unexpected"):
        cache.get("v3")
    assert "no drift reference for model version 'v3'" in caplog.text
    (store / "v3").unlink()
    publish_bundle(make_bundle(tmp_path / "bundle", "v3"), store.as_uri())
    with pytest.raises(UnknownVersionError):
        cache.get("v3")  # not before the retry interval
    now[0] = 31.0
    assert cache.get("v3").rows == ROWS


def test_an_unreachable_s3_store_is_a_storage_error_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("s3fs", reason="s3fs is not installed (the pipeline extra's s3://)")
    environ = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "S3_ENDPOINT": "127.0.0.1:9",  # the discard port: nothing listens
        "S3_USE_HTTPS": "0",
        "AWS_REGION": "us-east-1",
    }
    locator = StorageLocator("s3://mlpipeline/models/{version}", tmp_path / "cache", environ)
    cache = ReferenceCache(locator, retry_s=30, clock=lambda: 0.0)
    with caplog.at_level(logging.WARNING), pytest.raises(UnknownVersionError):
        cache.get("v1")  # counted and skipped by the monitor, looked up again later
    assert "s3://mlpipeline/models/v1: cannot read (EndpointConnectionError" in caplog.text


def test_bundle_locator_picks_by_template_and_refuses_unusable_urls(tmp_path: Path) -> None:
    assert isinstance(bundle_locator(None, tmp_path / "registry"), RegistryLocator)
    assert type(bundle_locator(str(tmp_path / "{version}"))) is TemplateLocator
    assert isinstance(bundle_locator("memory://m/{version}", cache_dir=tmp_path), StorageLocator)
    for bad, message in (
        ("s3://mlpipeline/models", r"must contain \{version\}"),
        ("nope://x/{version}", "unknown URL protocol nope://"),
        ("pvc://claim/{version}", "pvc:// is not readable"),
    ):
        with pytest.raises(ValueError, match=message):
            bundle_locator(bad, cache_dir=tmp_path)


@pytest.mark.parametrize("command", ["monitor", "trigger"])
def test_the_commands_refuse_an_unusable_bundles_url(command: str) -> None:
    from fraud_detection.cli import app

    result = CliRunner().invoke(
        app, [command, "--bundles", "nope://models/{version}"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2, result.output
    assert "--bundles" in result.output and "unknown URL protocol nope://" in result.output


@pytest.mark.integration
def test_kfp_local_runs_a_task_with_a_secret_as_env_and_ignores_it(tmp_path: Path) -> None:
    """kfp.local has no Kubernetes: the Secret part of :class:`S3Access` is left out of a local
    run (it neither fails nor sets the variables)."""
    from kfp import dsl, local

    from fraud_detection.pipeline.dag import S3Access, use_s3_access

    def has_key() -> bool:
        import os

        return "FRAUD_TEST_SECRET_KEY" in os.environ

    has_key.__annotations__ = {"return": bool}  # KFP reads types, not this module's strings
    component = dsl.component(has_key, base_image="python:3.11", install_kfp_package=False)

    def secret_env() -> bool:
        task = component()
        use_s3_access(task, S3Access("no-such-secret", {"key": "FRAUD_TEST_SECRET_KEY"}))
        return task.output

    secret_env.__annotations__ = {"return": bool}
    pipeline = dsl.pipeline(name="secret-env")(secret_env)

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "root"),
        raise_on_error=True,
    )
    assert pipeline().output is False


def test_the_pipeline_check_refuses_a_store_that_is_not_a_url() -> None:
    from fraud_detection.pipeline.parameters import ParameterError, check_parameters

    base = {"kafka_topic": "transactions"}
    assert check_parameters(base)["models_uri"] == ""
    store = "s3://mlpipeline/fraud-detection/models"
    assert check_parameters({**base, "models_uri": store})["models_uri"] == store
    with pytest.raises(ParameterError, match="models_uri: must be a URL"):
        check_parameters({**base, "models_uri": "/var/models"})
