"""Train/serve parity: replaying transactions through the online state gives the offline frame."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraud_detection.data.generator import GeneratorConfig, generate_transactions
from fraud_detection.features import FEATURE_NAMES, OnlineFeatureState, compute_features

TOLERANCE = 1e-9


def assert_parity(frame: pd.DataFrame) -> None:
    """Online replay in time order equals the vectorised features, column by column."""
    offline = compute_features(frame).to_numpy()
    online = OnlineFeatureState().replay(frame)
    worst = np.abs(online - offline).max(axis=0)
    mismatched = {
        name: float(gap) for name, gap in zip(FEATURE_NAMES, worst, strict=True) if gap > TOLERANCE
    }
    assert not mismatched, f"online and offline features differ: {mismatched}"


def test_parity_on_generated_data() -> None:
    frame = generate_transactions(
        GeneratorConfig(n_transactions=40_000, n_cards=600, days=45, fraud_rate=0.01, seed=3)
    )
    features = compute_features(frame)
    # The data must exercise every feature, or parity would be checked on zeros.
    assert (features.std() > 0).all(), features.std()[features.std() == 0]
    assert_parity(frame)


@pytest.mark.handbook
def test_parity_on_a_slice_of_the_handbook_data(handbook_dir) -> None:
    from fraud_detection.data.validation import load_transactions

    frame = load_transactions(handbook_dir / "transactions-2018-04.csv.gz")
    frame = frame[frame["timestamp"] < pd.Timestamp("2018-04-22", tz="UTC")]
    assert frame["is_fraud"].sum() > 0
    assert_parity(frame)


# ------------------------------------------------------------------ labels through serving
def delayed_label_events(
    frame: pd.DataFrame, rng: np.random.Generator
) -> dict[str, list[tuple[int, bool]]]:
    """Per transaction id, the labels the stream will carry for it, in their order.

    Every fraud gets its label; a sample of legitimate transactions gets ``is_fraud=0`` (a no-op),
    and a few get a mistaken ``1`` reversed by a ``0``. Some transactions' labels are delivered
    twice, in order, as a re-read topic would (the events of one transaction keep their order:
    the topic is keyed by transaction id). Each event: (is_fraud, carries merchant and time).
    """
    events: dict[str, list[tuple[int, bool]]] = {}
    for transaction_id, is_fraud in zip(frame["transaction_id"], frame["is_fraud"], strict=True):
        draw = rng.random()
        if is_fraud:
            labels = [1]
        elif draw < 0.05:
            labels = [1, 0]  # a reversed chargeback
        elif draw < 0.3:
            labels = [0]
        else:
            continue
        if rng.random() < 0.3:
            labels = labels * 2  # delivered again
        events[str(transaction_id)] = [(label, bool(rng.random() < 0.5)) for label in labels]
    return events


def test_parity_with_labels_arriving_late_shuffled_and_duplicated() -> None:
    """Transactions scored in time order through the live state; each label arrives through
    the labels consumer only once the data time is LABEL_DELAY_DAYS past its transaction, in
    random order across transactions and partly twice: merchant risk equals the offline frame.
    """
    from fraud_detection.features import LABEL_DELAY_DAYS, MICROS_PER_DAY, timestamps_to_micros
    from fraud_detection.serving.labels_consumer import LabelsConfig, LabelsConsumer
    from fraud_detection.serving.live_state import LABEL_FRAUD, LiveState, TimePolicy
    from fraud_detection.serving.requests import Transaction
    from fraud_detection.streaming.labels import Label

    frame = generate_transactions(
        GeneratorConfig(n_transactions=12_000, n_cards=300, days=40, fraud_rate=0.02, seed=11)
    )
    offline = compute_features(frame)
    risk_columns = [name for name in FEATURE_NAMES if name.startswith("merchant_risk")]
    assert (offline[risk_columns].to_numpy() > 0).any(), "no merchant risk to compare"
    rng = np.random.default_rng(5)
    events = delayed_label_events(frame, rng)

    live = LiveState(OnlineFeatureState(), TimePolicy("event"), dedup_size=len(frame))
    consumer = LabelsConsumer(LabelsConfig("unused:9092", "labels"), lambda: live)
    stamps = timestamps_to_micros(frame["timestamp"])
    order = np.argsort(stamps, kind="stable")
    delay = LABEL_DELAY_DAYS * MICROS_PER_DAY
    online = np.empty((len(frame), len(FEATURE_NAMES)))
    pending = 0  # position in `order` of the next transaction whose labels are not yet due
    applied = 0
    for position in order.tolist():
        now = int(stamps[position])
        due = []
        while pending < len(order) and int(stamps[order[pending]]) + delay <= now:
            due.append(int(order[pending]))
            pending += 1
        rng.shuffle(due)
        values = []
        for row in due:
            transaction_id = str(frame["transaction_id"].iat[row])
            for is_fraud, complete in events.get(transaction_id, []):
                label = Label(transaction_id, is_fraud, now)
                if complete:  # else the merchant and time come from the retry map
                    label = Label(
                        transaction_id,
                        is_fraud,
                        now,
                        str(frame["merchant_id"].iat[row]),
                        int(stamps[row]),
                    )
                values.append(label.value())
        if values:
            outcomes = consumer.apply(values)
            assert set(outcomes) <= {"fraud", "legit"}, outcomes
            applied += outcomes[LABEL_FRAUD]
        tx = Transaction(
            str(frame["transaction_id"].iat[position]),
            str(frame["card_id"].iat[position]),
            str(frame["merchant_id"].iat[position]),
            float(frame["amt"].iat[position]),
            now,
            None,
        )
        online[position] = live.absorb([tx])[0]
    assert applied > int(frame["is_fraud"].sum()) // 2, "too few labels were applied to compare"
    worst = np.abs(online - offline.to_numpy()).max(axis=0)
    mismatched = {
        name: float(gap) for name, gap in zip(FEATURE_NAMES, worst, strict=True) if gap > TOLERANCE
    }
    assert not mismatched, f"online and offline features differ: {mismatched}"
