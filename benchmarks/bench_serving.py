"""Serving latency and throughput, side by side in one run.

Scores the same 100-tree forest with the same payloads (one transaction per request, unique ids,
held-out transactions in time order) through:

(a) this project's transformer → predictor (two ``kserve.ModelServer`` processes; ONNX);
(a+m) the same with every scored transaction mirrored to Kafka (local tansu broker; the
    producer process at idle CPU priority, the default), and (a+m') with it at nice 10;
(b) the stock KServe stack: an equivalent of KServe's sklearn runtime (joblib,
    ``predict_proba``, ``PREDICT_PROBA=true``) behind a minimal KServe transformer computing the
    same features (``benchmarks/stock_kserve.py``);
(c) a do-nothing KServe transformer → predictor pair: the floor of the two-hop architecture;
(d) this project's collocated mode: the transformer scores in-process (one hop);
(e) a single do-nothing KServe hop, for reference.

Per stack: p50/p99 of sequential requests, then requests/s (and p50/p99 under load) with 16
concurrent keep-alive connections. All servers and this load generator share the machine's
cores; the load generator is a minimal asyncio HTTP/1.1 client so it costs as little as
possible, the same for every stack.

Run: ``python benchmarks/bench_serving.py [--quick]`` (about 3 minutes; --quick about 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from fraud_detection.serving.demo import to_instance
from fraud_detection.serving.launcher import ServerProcess, ServingStack, StackConfig
from fraud_detection.streaming.broker import LOOPBACK, free_port

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
STOCK = str(HERE / "stock_kserve.py")
MODEL = "fraud-detector"


@dataclass
class Result:
    name: str
    seq_p50: float
    seq_p99: float
    rps: float
    load_p50: float
    load_p99: float
    errors: int


# ------------------------------------------------------------------------------- load generator
class Connection:
    """One keep-alive HTTP/1.1 connection sending pre-encoded POSTs."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.host, self.port, self.path = host, port, path
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, body: bytes) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        head = (
            f"POST {self.path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        chunked = False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value:
                chunked = True
        if not chunked:
            return status, await self.reader.readexactly(length)
        data = b""
        while True:
            size = int((await self.reader.readline()).strip(), 16)
            chunk = await self.reader.readexactly(size + 2)
            if size == 0:
                return status, data
            data += chunk[:-2]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def sequential(url: tuple[str, int, str], bodies: list[bytes]) -> tuple[list[float], int]:
    conn = Connection(*url)
    await conn.open()
    latencies, errors = [], 0
    for body in bodies:
        started = time.perf_counter()
        status, _ = await conn.post(body)
        latencies.append(time.perf_counter() - started)
        errors += status != 200
    conn.close()
    return latencies, errors


async def concurrent(
    url: tuple[str, int, str], bodies: list[bytes], workers: int, seconds: float
) -> tuple[int, float, list[float], int]:
    connections = [Connection(*url) for _ in range(workers)]
    for conn in connections:
        await conn.open()
    latencies: list[float] = []
    errors = 0
    position = 0
    deadline = time.perf_counter() + seconds

    async def work(conn: Connection) -> None:
        nonlocal position, errors
        while time.perf_counter() < deadline:
            body = bodies[position % len(bodies)]
            position += 1
            started = time.perf_counter()
            status, _ = await conn.post(body)
            latencies.append(time.perf_counter() - started)
            errors += status != 200

    started = time.perf_counter()
    await asyncio.gather(*(work(conn) for conn in connections))
    elapsed = time.perf_counter() - started
    for conn in connections:
        conn.close()
    return len(latencies), elapsed, latencies, errors


def measure(
    name: str, port: int, path: str, bodies: list[bytes], seq: int, warmup: int, seconds: float
) -> Result:
    url = (LOOPBACK, port, path)
    asyncio.run(sequential(url, bodies[:warmup]))
    seq_lat, seq_err = asyncio.run(sequential(url, bodies[warmup : warmup + seq]))
    done, elapsed, load_lat, load_err = asyncio.run(
        concurrent(url, bodies[warmup + seq :], 16, seconds)
    )
    ms = np.asarray(seq_lat) * 1000
    lms = np.asarray(load_lat) * 1000
    return Result(
        name,
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 99)),
        done / elapsed,
        float(np.percentile(lms, 50)),
        float(np.percentile(lms, 99)),
        seq_err + load_err,
    )


def median_result(results: list[Result]) -> Result:
    """Each figure's median over repeated measurements; errors summed."""

    def median(field: str) -> float:
        return float(np.median([getattr(result, field) for result in results]))

    return Result(
        results[0].name,
        median("seq_p50"),
        median("seq_p99"),
        median("rps"),
        median("load_p50"),
        median("load_p99"),
        sum(result.errors for result in results),
    )


def mirror_summary(base_url: str) -> str:
    """Mirrored and dropped record counts from the transformer's /metrics."""
    import httpx

    sent = dropped = 0.0
    for line in httpx.get(f"{base_url}/metrics", timeout=5).text.splitlines():
        if line.startswith("fraud_mirror_sent_total "):
            sent = float(line.split()[-1])
        elif line.startswith("fraud_mirror_dropped_total{"):
            dropped += float(line.split()[-1])
    return f"{sent:.0f} records mirrored, {dropped:.0f} dropped"


# ------------------------------------------------------------------------------- stacks
@contextlib.contextmanager
def stock_pair(kind: str, bundle: Path, log_dir: Path) -> Iterator[ServerProcess]:
    predictor = ServerProcess(
        f"{kind} predictor",
        STOCK,
        [f"predictor-{kind}", "--model_dir", str(bundle)],
        LOOPBACK,
        free_port(),
        log_dir / f"{kind}-predictor.log",
    ).start()
    transformer = ServerProcess(
        f"{kind} transformer",
        STOCK,
        [
            "transformer-stock" if kind == "sklearn" else "transformer-noop",
            "--model_dir",
            str(bundle),
            "--predictor_host",
            predictor.address,
        ],
        LOOPBACK,
        free_port(),
        log_dir / f"{kind}-transformer.log",
    ).start()
    try:
        predictor.wait_ready()
        transformer.wait_ready()
        yield transformer
    finally:
        transformer.stop()
        predictor.stop()


@contextlib.contextmanager
def single_noop(log_dir: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(
        "noop", STOCK, ["predictor-noop"], LOOPBACK, free_port(), log_dir / "noop.log"
    ).start()
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@contextlib.contextmanager
def ours(bundle: Path, log_dir: Path, **options: object) -> Iterator[ServerProcess]:
    # Generated historical data: the transformer's clock follows the scored timestamps.
    config = StackConfig(
        model_dir=bundle,
        log_dir=log_dir,
        clock="event",
        **options,  # type: ignore[arg-type]
    )
    with ServingStack(config) as stack:
        assert stack.transformer is not None
        yield stack.transformer


def payloads(data: object, count: int, kind: str) -> list[bytes]:
    rows = data.held_out.to_dict("records")  # type: ignore[attr-defined]
    bodies = []
    for i in range(count):
        instance = to_instance(rows[i % len(rows)])
        instance["transaction_id"] = f"bench-{i}"
        if kind == "noop":
            bodies.append(orjson.dumps({"instances": [[0.0] * 18]}))
        else:
            bodies.append(orjson.dumps({"instances": [instance]}))
    return bodies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fewer requests, shorter load.")
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument(
        "--repeat", type=int, default=1, help="Measure each stack this many times; report medians."
    )
    parser.add_argument(
        "--only", default="", help="Comma-separated stack labels to run, e.g. a,a+m (default all)."
    )
    options = parser.parse_args()
    seq, warmup, seconds = (300, 50, 3.0) if options.quick else (1000, 200, 6.0)

    from support.bundles import build_bundle, make_data

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    print(f"building a {options.trees}-tree forest (max depth {options.depth}) ...", flush=True)
    data = make_data(n_transactions=60_000, n_cards=2_000, days=60)
    bundle = build_bundle(
        work / "bundle", data.train, "bench-1", n_estimators=options.trees, max_depth=options.depth
    )
    total = warmup + seq + 20_000
    real, noop = payloads(data, total, "real"), payloads(data, total, "noop")
    path = f"/v1/models/{MODEL}:predict"
    logs = work / "logs"

    runs = [
        ("(a) ours: transformer -> predictor", lambda: ours(bundle, logs, mirror=False), real),
        (
            "(a+m) ours, mirroring to Kafka",
            lambda: ours(bundle, logs, mirror=True),
            real,
        ),
        (
            "(a+m') mirroring, producer at nice 10",
            lambda: ours(bundle, logs, mirror=True, transformer_args=["--mirror_priority", "low"]),
            real,
        ),
        ("(b) stock KServe sklearn chain", lambda: stock_pair("sklearn", bundle, logs), real),
        ("(c) do-nothing KServe two-hop", lambda: stock_pair("noop", bundle, logs), noop),
        (
            "(d) ours collocated (one hop)",
            lambda: ours(bundle, logs, mirror=False, collocated=True),
            real,
        ),
        ("(e) do-nothing single KServe hop", lambda: single_noop(logs), noop),
    ]
    if options.only:
        wanted = {f"({label.strip()})" for label in options.only.split(",")}
        runs = [run for run in runs if run[0].split()[0] in wanted]
    results: dict[str, Result] = {}
    mirror_counts: dict[str, str] = {}
    for name, start, bodies in runs:
        print(f"measuring {name} ...", flush=True)
        with start() as server:
            repeats = [
                measure(name, server.port, path, bodies, seq, warmup, seconds)
                for _ in range(options.repeat)
            ]
            results[name] = median_result(repeats)
            if "mirroring" in name:
                time.sleep(2.0)  # let the producer deliver what is in flight
                mirror_counts[name] = mirror_summary(server.url)
        time.sleep(0.5)

    print()
    print(
        f"{os.cpu_count()} cores; {seq} sequential requests after {warmup} warm-up; "
        f"concurrency 16 for {seconds:g} s; one transaction per request\n"
    )
    header = (
        f"{'stack':<38} {'seq p50':>8} {'seq p99':>8} {'req/s@16':>9} "
        f"{'p50@16':>8} {'p99@16':>8} {'errors':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results.values():
        print(
            f"{r.name:<38} {r.seq_p50:>6.2f}ms {r.seq_p99:>6.2f}ms {r.rps:>9.0f} "
            f"{r.load_p50:>6.2f}ms {r.load_p99:>6.2f}ms {r.errors:>6}"
        )
    for name, summary in mirror_counts.items():
        print(f"{name}: {summary}")
    if len(results) < 7:
        return
    a, am, _low, b, c, d = (results[name] for name, _, _ in runs[:6])
    print()
    print(
        f"(b)/(a) p99: {b.seq_p99 / a.seq_p99:.1f}x lower (goal >= 3x); "
        f"throughput (a)/(b): {a.rps / b.rps:.1f}x higher (goal >= 2x)"
    )
    print(f"(b)/(d) p99: {b.seq_p99 / d.seq_p99:.1f}x lower with the collocated mode (goal >= 10x)")
    print(
        f"(a) against the do-nothing two-hop floor (c): p99 {a.seq_p99 / c.seq_p99:.2f}x, "
        f"throughput {a.rps / c.rps:.2f}x"
    )
    print(
        f"mirroring cost: p50 {am.seq_p50 - a.seq_p50:+.2f} ms, "
        f"p99 {am.seq_p99 - a.seq_p99:+.2f} ms, "
        f"throughput {100 * (am.rps / a.rps - 1):+.0f} %"
    )


if __name__ == "__main__":
    main()
