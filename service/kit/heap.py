"""The cyclic garbage collector in long-running processes."""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Keep the objects alive after start-up out of the cyclic collector's full passes.

    A full (gen-2) collection walks every object the process holds: imported modules,
    schemas, compiled statements. Under load those pauses were the latency tail: 62 ms
    against a p50 of 12 ms in the API (docs/benchmarks.md), and 70-116 ms in the relay and
    the consume worker, each one a spike in an event's 201 -> handler time. Garbage is
    collected first, so only live objects are frozen; reference counting still frees them.
    Call once, when set-up is done and before the process starts its work.
    """
    gc.collect()
    gc.freeze()
