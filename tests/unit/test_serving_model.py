"""Loading a bundle for scoring: integrity, missing and ambiguous models, runtimes, reloads,
and the predictor model's v1/v2 handling (in-process, no server)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from fraud_detection.bundle import (
    MANIFEST,
    MODEL_JOBLIB,
    MODEL_ONNX,
    BundleIntegrityError,
    ModelMissingError,
    read_manifest,
    write_manifest,
)
from fraud_detection.features import FEATURE_NAMES, compute_features
from fraud_detection.registry import ModelRegistry
from fraud_detection.serving.model import (
    AmbiguousModelError,
    BundleSource,
    BundleWatcher,
    load_scoring_model,
)
from fraud_detection.serving.requests import RequestError
from support.bundles import SplitData
from support.waiting import wait_until


@pytest.fixture
def bundle_copy(serving_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the session bundle that a test may break."""
    return Path(shutil.copytree(serving_bundle, tmp_path / "bundle"))


def held_out_features(data: SplitData, rows: int = 200) -> np.ndarray:
    return compute_features(data.held_out).to_numpy()[:rows]


def test_onnx_is_the_default_and_agrees_with_sklearn(
    serving_bundle: Path, serving_data: SplitData
) -> None:
    onnx = load_scoring_model(serving_bundle)
    sklearn = load_scoring_model(serving_bundle, "sklearn")
    assert (onnx.runtime, sklearn.runtime) == ("onnx", "sklearn")
    assert onnx.version == sklearn.version == "test-1"
    features = held_out_features(serving_data)
    a, b = onnx.predict_proba(features), sklearn.predict_proba(features)
    assert a.shape == b.shape == (len(features),)
    assert np.max(np.abs(a - b)) < 1e-5
    assert 0 < a.mean() < 1 and a.std() > 0  # the model discriminates
    assert onnx.score(features[:3].tolist()) == pytest.approx(a[:3].tolist())


def test_sklearn_is_the_fallback_without_onnx(bundle_copy: Path) -> None:
    (bundle_copy / MODEL_ONNX).unlink()
    manifest = read_manifest(bundle_copy)
    write_manifest(bundle_copy, manifest)
    assert load_scoring_model(bundle_copy).runtime == "sklearn"
    with pytest.raises(ModelMissingError, match="onnx"):
        load_scoring_model(bundle_copy, "onnx")


@pytest.mark.parametrize("name", [MODEL_ONNX, MODEL_JOBLIB, "feature_state.json.gz"])
def test_a_tampered_file_is_refused(bundle_copy: Path, name: str) -> None:
    path = bundle_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match=f"{name} does not match its sha256"):
        load_scoring_model(bundle_copy)


def test_a_missing_file_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / MODEL_JOBLIB).unlink()
    with pytest.raises(BundleIntegrityError, match=f"{MODEL_JOBLIB} is missing"):
        load_scoring_model(bundle_copy)


def test_no_bundle_is_a_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ModelMissingError):
        load_scoring_model(tmp_path)
    with pytest.raises(ModelMissingError):
        load_scoring_model(tmp_path / "nowhere")


def test_a_bundle_without_model_files_is_a_missing_model(bundle_copy: Path) -> None:
    for name in (MODEL_ONNX, MODEL_JOBLIB):
        (bundle_copy / name).unlink()
    write_manifest(bundle_copy, read_manifest(bundle_copy))
    with pytest.raises(ModelMissingError):
        load_scoring_model(bundle_copy)


def test_two_model_files_of_a_kind_are_ambiguous(bundle_copy: Path) -> None:
    shutil.copy(bundle_copy / MODEL_ONNX, bundle_copy / "model-old.onnx")
    write_manifest(bundle_copy, read_manifest(bundle_copy))
    with pytest.raises(AmbiguousModelError, match="more than one onnx model"):
        load_scoring_model(bundle_copy)


def test_an_unlisted_model_file_is_refused(bundle_copy: Path) -> None:
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    del manifest["files"][MODEL_JOBLIB]
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleIntegrityError, match="not covered by the manifest"):
        load_scoring_model(bundle_copy)


def test_a_model_for_other_features_is_refused(bundle_copy: Path) -> None:
    manifest = read_manifest(bundle_copy)
    manifest.feature_names = list(reversed(FEATURE_NAMES))
    write_manifest(bundle_copy, manifest)
    with pytest.raises(BundleIntegrityError, match="trained on features"):
        load_scoring_model(bundle_copy)


def test_watcher_follows_the_registry(serving_bundle: Path, tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    registry.promote(serving_bundle)
    second = Path(shutil.copytree(serving_bundle, tmp_path / "second"))
    manifest = read_manifest(second)
    manifest.model_version = "test-2"
    write_manifest(second, manifest)

    loaded: list[str] = []
    source = BundleSource(registry_root=registry.root)
    watcher = BundleWatcher(
        source, lambda path: loaded.append(load_scoring_model(path).version), source.resolve(), 0.05
    ).start()
    try:
        registry.promote(second)
        wait_until(lambda: loaded, "the watcher to load the promoted version")
        assert loaded == ["test-2"]
        # A bundle broken on disk is not switched to; the old one keeps serving. The version is
        # damaged before `current` points at it, as a disk fault would leave it (promote and
        # rollback verify, so they would refuse it).
        broken = registry.versions_dir / "test-3"
        shutil.copytree(serving_bundle, broken)
        manifest = read_manifest(broken)
        manifest.model_version = "test-3"
        write_manifest(broken, manifest)
        (broken / MODEL_ONNX).write_bytes(b"not a model")
        pointer = registry.root / ".current.test"
        pointer.symlink_to(Path("versions") / "test-3")
        os.replace(pointer, registry.pointer)
        wait_until(lambda: watcher.failures, "the watcher to try the broken version")
        assert watcher.failures == 1 and loaded == ["test-2"]
        # An explicit reload of the fixed source loads again.
        registry.rollback("test-2")
        watcher.request_reload()
        wait_until(lambda: len(loaded) == 2, "the requested reload")
        assert loaded == ["test-2", "test-2"]
    finally:
        watcher.stop()


# ------------------------------------------------------------------ the predictor kserve.Model
@pytest.fixture(scope="module")
def predictor(serving_bundle: Path) -> object:
    from fraud_detection.serving.predictor import make_predictor

    model = make_predictor("fraud-detector", BundleSource(model_dir=serving_bundle))
    model.load()
    return model


def test_predictor_v1(predictor: object, serving_data: SplitData) -> None:
    features = held_out_features(serving_data, 5)
    answer, _headers = asyncio.run(predictor({"instances": features.tolist()}))  # type: ignore[operator]
    expected = load_scoring_model(predictor.source.model_dir).predict_proba(features)  # type: ignore[attr-defined]
    assert answer["model_version"] == "test-1"
    assert answer["predictions"] == pytest.approx(expected.tolist(), abs=1e-6)


def test_predictor_v2(predictor: object, serving_data: SplitData) -> None:
    from kserve.protocol.infer_type import InferInput, InferRequest

    features = held_out_features(serving_data, 4).astype(np.float32)
    tensor = InferInput("features", list(features.shape), "FP32", features.reshape(-1).tolist())
    answer, _ = asyncio.run(predictor(InferRequest("fraud-detector", [tensor], request_id="r1")))  # type: ignore[operator]
    (output,) = answer.outputs
    assert (output.name, output.shape, answer.model_version, answer.id) == (
        "fraud_probability",
        [4],
        "test-1",
        "r1",
    )
    v1, _ = asyncio.run(predictor({"instances": features.tolist()}))  # type: ignore[operator]
    assert output.data == pytest.approx(v1["predictions"], abs=1e-6)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"instances": [[1.0, 2.0]]}, "instances"),
        ({"instances": []}, "instances"),
        ({"instances": [["a"] * len(FEATURE_NAMES)]}, "instances"),
        ({"instances": [[float("nan")] * len(FEATURE_NAMES)]}, "instances[0]"),
        ({"rows": []}, "instances"),
    ],
)
def test_predictor_refuses_bad_rows(predictor: object, body: dict, field: str) -> None:
    with pytest.raises(RequestError) as caught:
        asyncio.run(predictor(body))  # type: ignore[operator]
    assert caught.value.field == field and caught.value.status == 400
