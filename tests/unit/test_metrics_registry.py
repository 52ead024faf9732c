"""The metrics helpers: a monitor's own registry, label values shown at 0, and a process's
metric families created once however many threads ask at the same time."""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest

from fraud_detection.metrics_registry import created_once, registry_or_new, show_at_zero
from fraud_detection.monitoring.metrics import MonitorMetrics, PerformanceMetrics
from fraud_detection.monitoring.trigger_runner import TriggerMetrics


def test_a_given_registry_is_kept_and_none_gives_a_new_one_not_the_default() -> None:
    given = CollectorRegistry()
    assert registry_or_new(given) is given
    first, second = registry_or_new(None), registry_or_new(None)
    assert first is not second and REGISTRY not in (first, second)


def test_every_label_value_shows_at_zero_before_it_counts() -> None:
    registry = CollectorRegistry()
    single = show_at_zero(
        Counter("single", "One label.", ["reason"], registry=registry), ["a", "b"]
    )
    pairs = [("r1", "fired"), ("r2", "cool_down")]
    show_at_zero(Counter("pair", "Two labels.", ["rule", "action"], registry=registry), pairs)
    single.labels(reason="b").inc(2)
    text = generate_latest(registry).decode()
    assert 'single_total{reason="a"} 0.0' in text
    assert 'single_total{reason="b"} 2.0' in text
    assert 'pair_total{action="fired",rule="r1"} 0.0' in text
    assert 'pair_total{action="cool_down",rule="r2"} 0.0' in text
    assert 'rule="r1",action="cool_down"' not in text and 'action="cool_down",rule="r1"' not in text


def test_racing_threads_create_once_and_share_the_result() -> None:
    calls: list[int] = []
    barrier = threading.Barrier(8)
    barrier_passed = threading.Event()

    @created_once
    def families() -> object:
        calls.append(1)
        barrier_passed.wait()  # hold the first creator while the others ask
        return object()

    results: list[object] = []

    def ask() -> None:
        barrier.wait()
        results.append(families())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    barrier_passed.set()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert len(results) == 8 and all(result is results[0] for result in results)
    assert families() is results[0] and len(calls) == 1


def test_the_monitors_each_get_a_registry_of_their_own_with_their_reasons_at_zero() -> None:
    monitor, performance, trigger = MonitorMetrics(), PerformanceMetrics(), TriggerMetrics()
    registries = {id(monitor.registry), id(performance.registry), id(trigger.registry)}
    assert len(registries) == 3 and id(REGISTRY) not in registries
    shared = PerformanceMetrics(monitor.registry)
    assert shared.registry is monitor.registry
    text = generate_latest(trigger.registry).decode()
    assert 'fraud_trigger_runs_finished_total{outcome="deployed"} 0.0' in text
    assert 'fraud_trigger_decisions_total{action="fired",rule="drift"}' in text
