"""Garbage-collector settings of a node process (``[process]`` in the node config).

Theory of operation: CPython frees most objects by reference counting; its cyclic
collector only looks for reference cycles, and each collection traverses every tracked
object of the generations it covers. Two defaults cost a node dearly:

- a young collection every 700 net container allocations: a 1,000-event JSON request
  decodes into a few thousand dicts, so one request runs several collections while its
  events are alive, and they are promoted into the older generations, which then fill and
  trigger full collections (measured on a leader under 1,000-event appends: about a tenth
  of its CPU in the collector, with full collections of ~35 ms each, a latency spike every
  time); ``gc_young_threshold`` spaces the young collections out;
- full collections traverse everything the process imported and built at start (modules,
  classes, the recovered state): ``gc_freeze`` moves those objects into the permanent
  generation once the node has started (:func:`gc.freeze`), so later collections skip them.

Cycles are still collected, only less often: the garbage they hold between two collections
is bounded by the allocations the thresholds allow between them (counts of objects, the
older generations' thresholds unchanged), so memory does not grow with the length of a run. Objects frozen at start that later become garbage are freed by reference counting as
before; only a cycle among them would stay, and the start-up objects of a node do not form
such garbage.
"""

from __future__ import annotations

import gc
import logging

from geostore.config import ProcessSettings

log = logging.getLogger(__name__)


def apply_thresholds(settings: ProcessSettings) -> None:
    """Set the young generation's threshold (the older ones keep CPython's defaults)."""
    _, older1, older2 = gc.get_threshold()
    gc.set_threshold(settings.gc_young_threshold, older1, older2)


def freeze_started(settings: ProcessSettings) -> None:
    """Once the node has started: what exists now is never traversed again."""
    if not settings.gc_freeze:
        return
    gc.collect()  # start-up garbage goes first, so it is not frozen with the rest
    gc.freeze()
    log.info("gc: %d objects frozen after start", gc.get_freeze_count())
