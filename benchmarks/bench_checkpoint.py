"""Checkpoints of the transformer's live state: what they cost the request path, and a restart.

Usage: python benchmarks/bench_checkpoint.py [--transactions N] [--cards N] [--days N]

Builds the live state of N generated transactions, then writes one checkpoint the way the
transformer does (a forked child serializes the state) while a probe thread stands in for the
request path: every millisecond it takes the state's lock, as scoring a transaction does. The
probe's longest wait is what a request can wait for a checkpoint. For comparison it also times
serializing the same state in-process (what the request path would wait for without the fork),
and reading the checkpoint back (a restart).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path


def probe_pauses(lock: threading.Lock, stop: threading.Event, pauses: list[float]) -> None:
    """Take the lock every millisecond; record the longest gap beyond the sleep."""
    last = time.perf_counter()
    while not stop.is_set():
        with lock:
            pass
        now = time.perf_counter()
        pauses.append(now - last)
        last = now
        time.sleep(0.001)


def main() -> None:
    """Build a state, checkpoint it with a probe running, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--cards", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=90)
    args = parser.parse_args()

    import orjson
    from rich.console import Console
    from rich.table import Table

    from fraud_detection.data.generator import GeneratorConfig, generate_transactions
    from fraud_detection.features import OnlineFeatureState
    from fraud_detection.serving.checkpoint import load_latest
    from fraud_detection.serving.live_state import Checkpointer, LiveState

    console = Console()
    with console.status(f"live state of {args.transactions:,} transactions"):
        frame = generate_transactions(
            GeneratorConfig(n_transactions=args.transactions, n_cards=args.cards, days=args.days)
        )
        live = LiveState(OnlineFeatureState.from_frame(frame))
        live.changes += 1

    with tempfile.TemporaryDirectory() as tmp, console.status("checkpointing"):
        pauses: list[float] = []
        stop = threading.Event()
        probe = threading.Thread(target=probe_pauses, args=(live.lock, stop, pauses))
        probe.start()
        time.sleep(0.5)
        quiet = max(pauses)
        pauses.clear()
        started = time.perf_counter()
        path = Checkpointer(lambda: live, Path(tmp), 3_600, lambda: "bench").write()
        written_s = time.perf_counter() - started
        stop.set()
        probe.join()
        assert path is not None
        size_mb = path.stat().st_size / 1e6
        started = time.perf_counter()
        with live.lock:
            orjson.dumps(live.payload("bench"))
        in_process_s = time.perf_counter() - started
        started = time.perf_counter()
        restored = load_latest(tmp)
        restore_s = time.perf_counter() - started
        assert restored is not None

    table = Table(title=f"checkpoint of {len(live):,} cards ({args.transactions:,} transactions)")
    table.add_column("what")
    table.add_column("figure", justify="right")
    table.add_row("checkpoint written (forked child)", f"{written_s:.2f} s, {size_mb:.1f} MB")
    table.add_row("longest probe gap while it was written", f"{max(pauses) * 1e3:.1f} ms")
    table.add_row("longest probe gap before (no checkpoint)", f"{quiet * 1e3:.1f} ms")
    table.add_row("the same state serialized in-process", f"{in_process_s * 1e3:.0f} ms")
    table.add_row("restore at start", f"{restore_s:.2f} s")
    console.print(table)


if __name__ == "__main__":
    main()
