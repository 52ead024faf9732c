"""Where the Prometheus metrics live, and the label values they show before anything happened.

Two homes, for two kinds of process:

* the model servers export prometheus_client's default registry (KServe serves it on
  ``/metrics``): their metric families are created once per process, on first use
  (:func:`created_once`), since a family can be registered only once;
* each monitor (drift, performance, retraining trigger) keeps its families in a registry of its
  own, given or new (:func:`registry_or_new`), so that several can run in one process and one
  ``/metrics`` can serve two of them.

Either way a labelled counter shows every known label value at 0 from the start
(:func:`show_at_zero`), so a dashboard or an alert sees a series before its first event.
Nothing here imports prometheus_client until it is called.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

T = TypeVar("T")


def registry_or_new(registry: CollectorRegistry | None) -> CollectorRegistry:
    """``registry``, else a new, empty one (not the process's default registry)."""
    from prometheus_client import CollectorRegistry

    return registry if registry is not None else CollectorRegistry()


def show_at_zero(metric: T, values: Iterable[str | tuple[str, ...]]) -> T:
    """Create ``metric``'s child for each label value (a tuple: one value per label, in the
    order of its label names), so each shows at 0 until it first counts; return ``metric``."""
    labelled: Any = metric
    for value in values:
        labelled.labels(*(value if isinstance(value, tuple) else (value,)))
    return metric


def created_once(factory: Callable[[], T]) -> Callable[[], T]:
    """``factory`` made callable any number of times: the first call (one at a time across
    threads) creates the result, every later call returns that same result."""
    lock = threading.Lock()
    made: list[T] = []

    @functools.wraps(factory)
    def once() -> T:
        if not made:
            with lock:
                if not made:
                    made.append(factory())
        return made[0]

    return once
