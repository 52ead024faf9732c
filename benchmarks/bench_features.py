"""Feature computation speed: offline (vectorised, per frame) and online (per transaction).

Usage: python benchmarks/bench_features.py [--transactions N] [--cards N]
Targets from the foundation issue: one million rows offline in at most 60 s; online at most
50 µs per transaction.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    """Generate data, time both feature paths and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--cards", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=90)
    args = parser.parse_args()

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from fraud_detection.data.generator import GeneratorConfig, generate_transactions
    from fraud_detection.features import OnlineFeatureState, compute_features, timestamps_to_micros

    console = Console()
    with console.status(f"generating {args.transactions:,} transactions"):
        frame = generate_transactions(
            GeneratorConfig(n_transactions=args.transactions, n_cards=args.cards, days=args.days)
        )

    with console.status("offline features"):
        started = time.perf_counter()
        offline = compute_features(frame)
        offline_s = time.perf_counter() - started

    cards = frame["card_id"].astype(str).tolist()
    merchants = frame["merchant_id"].astype(str).tolist()
    amounts = frame["amt"].astype(float).tolist()
    stamps = timestamps_to_micros(frame["timestamp"]).tolist()
    state = OnlineFeatureState()
    latencies = np.empty(len(frame))
    with console.status("online features, one transaction at a time"):
        clock = time.perf_counter
        rows = zip(cards, merchants, amounts, stamps, strict=True)
        for i, (card, merchant, amount, stamp) in enumerate(rows):
            started = clock()
            state.process(card, merchant, amount, stamp)
            latencies[i] = clock() - started
    online_total = float(latencies.sum())

    table = Table(title=f"features for {len(frame):,} transactions, {args.cards:,} cards")
    table.add_column("path")
    table.add_column("figure", justify="right")
    table.add_row("offline compute_features (whole frame)", f"{offline_s:.2f} s")
    table.add_row("offline rows per second", f"{len(frame) / offline_s:,.0f}")
    table.add_row("online total", f"{online_total:.2f} s")
    for label, q in (("online p50", 50), ("online p99", 99), ("online p99.9", 99.9)):
        table.add_row(f"{label} per transaction", f"{np.percentile(latencies, q) * 1e6:.1f} µs")
    table.add_row("online mean per transaction", f"{online_total / len(frame) * 1e6:.1f} µs")
    console.print(table)
    assert offline.shape[0] == len(frame)


if __name__ == "__main__":
    main()
