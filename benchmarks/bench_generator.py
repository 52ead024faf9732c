"""Time the synthetic transaction generator and the file writers.

Usage: ``python benchmarks/bench_generator.py [--transactions N] [--cards N] [--drift-start-day D]``

Generates N transactions (default one million), writes them to CSV.gz and Parquet in a temporary
directory and prints seconds and rows per second for each step. A measurement, not a test.
"""

from __future__ import annotations

import argparse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=1_000_000, help="rows to generate")
    parser.add_argument("--cards", type=int, default=2_000, help="number of cards")
    parser.add_argument("--seed", type=int, default=42, help="random seed")
    parser.add_argument(
        "--drift-start-day", type=int, default=20, help="drift from this day (negative: none)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a table of timings."""
    import tempfile
    import time
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from fraud_detection.data.files import write_transactions
    from fraud_detection.data.generator import GeneratorConfig, generate_transactions

    args = parse_args(argv)
    config = GeneratorConfig(
        n_transactions=args.transactions,
        n_cards=args.cards,
        seed=args.seed,
        drift_start_day=args.drift_start_day if args.drift_start_day >= 0 else None,
    )
    console = Console()
    table = Table(title=f"generator benchmark: {config.n_transactions:,} transactions")
    for column in ("step", "seconds", "rows/s", "size"):
        table.add_column(column, justify="left" if column == "step" else "right")

    notes: list[str] = []
    started = time.perf_counter()
    frame = generate_transactions(config)
    elapsed = time.perf_counter() - started
    table.add_row("generate", f"{elapsed:.2f}", f"{len(frame) / elapsed:,.0f}", "")

    with tempfile.TemporaryDirectory() as tmp:
        for suffix in (".csv.gz", ".parquet"):
            path = Path(tmp) / f"transactions{suffix}"
            started = time.perf_counter()
            try:
                write_transactions(frame, path)
            except ImportError as exc:
                table.add_row(f"write {suffix}", "-", "-", "unavailable")
                notes.append(f"{suffix}: {exc}")
                continue
            elapsed = time.perf_counter() - started
            size = f"{path.stat().st_size / 1e6:,.1f} MB"
            table.add_row(f"write {suffix}", f"{elapsed:.2f}", f"{len(frame) / elapsed:,.0f}", size)

    console.print(table)
    for note in notes:
        console.print(f"[yellow]{note}[/]", markup=True, highlight=False)
    console.print(f"fraud rows: {int(frame['is_fraud'].sum()):,} ({frame['is_fraud'].mean():.4%})")


if __name__ == "__main__":
    main()
