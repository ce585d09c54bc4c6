"""Metric series are bounded: label sets past SERIES_MAX add to one overflow series instead of growing memory."""

from __future__ import annotations

from geostore.runtime.metrics import OVERFLOW, SERIES_MAX, Counter, Histogram


def test_counter_folds_new_label_sets_into_overflow() -> None:
    c = Counter("geostore_test_total", "test")
    for i in range(SERIES_MAX + 50):
        c.inc(route=f"/r{i}")
    c.inc(route="/r0")
    assert len(c._values) == SERIES_MAX + 1
    assert c._values[OVERFLOW] == 50
    assert c._values[(("route", "/r0"),)] == 2
    assert any('overflow="true"' in line for line in c.render())


def test_histogram_folds_new_label_sets_into_overflow() -> None:
    h = Histogram("geostore_test_seconds", "test")
    for i in range(SERIES_MAX + 3):
        h.observe(0.001, group=f"g{i}")
    assert len(h._series) == SERIES_MAX + 1
    assert sum(h._series[OVERFLOW][0]) == 3
