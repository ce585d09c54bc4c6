"""An incremental parser for server-sent events (the WHATWG ``text/event-stream`` format).

Feed it decoded lines; it yields one :class:`SseMessage` per blank-line-terminated message.
Comment lines (``:`` first, used as keep-alives) are skipped; ``data`` lines of one message
join with newlines; ``id`` and ``event`` are kept. Pure: no IO, so it is tested directly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SseMessage:
    event: str
    data: str
    id: str | None


class SseParser:
    def __init__(self) -> None:
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None

    def feed_line(self, line: str) -> SseMessage | None:
        """One line without its terminator; returns a message when ``line`` ends one."""
        if line == "":
            if not self._data and not self._event:
                return None
            msg = SseMessage(self._event or "message", "\n".join(self._data), self._id)
            self._data, self._event = [], ""
            return msg
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None
