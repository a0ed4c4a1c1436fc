"""What both protocol front ends do with their output: gather it during a loop turn, write it once.

A connection appends frames with `send`; the transport shell calls `take_output` once per loop turn
(after handling a read, or from the flush it was asked to schedule) and writes the result. While
bytes wait (`out_bytes`) or the socket is full (`write_paused`), consumers on the connection refuse
deliveries and mark it `starved`; `after_write` and `writing_paused(False)` wake them again.

Subclasses say what else belongs in a flush (pending confirms or dispositions) and how to wake
their consumers, through the three hooks at the end.
"""

from __future__ import annotations

from typing import Any


class OutputBuffer:
    shell: Any
    state: str

    def init_output(self) -> None:
        self.out: list[bytes] = []
        self.out_bytes = 0  # bytes in `out`; deliveries stop past channel.OUT_LIMIT
        self.flush_scheduled = False
        self.receiving = False  # inside data_received: the shell flushes at its end anyway
        self.write_paused = False  # the transport's buffer is full
        self.starved = False  # a consumer was refused for want of output room
        self.send_activity = False  # for heartbeats / idle timeouts
        self._flow_blocked_by: set[object] = set()  # congested queues holding our reading

    def send(self, data: bytes) -> None:
        self.out.append(data)
        self.out_bytes += len(data)
        if not self.receiving and not self.flush_scheduled:
            self.flush_scheduled = True
            self.shell.schedule_flush()

    def flush_soon(self) -> None:
        if (self.out or self._pending_output()) and not self.flush_scheduled:
            self.flush_scheduled = True
            self.shell.schedule_flush()

    def take_output(self) -> bytes:
        """Everything to write now (what `_flush_pending` adds included)."""
        self.flush_scheduled = False
        self._flush_pending()
        out = self.out
        if not out:
            return b""
        self.send_activity = True
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self.out_bytes = 0
        return data

    def after_write(self) -> None:
        """Output went to the socket: consumers refused for want of room may take more now."""
        if self.starved and not self.write_paused:
            self.starved = False
            self._kick_consumers()

    def writing_paused(self, paused: bool) -> None:
        self.write_paused = paused
        if not paused:
            self._kick_consumers()

    def flow_blocked(self, queue: object) -> None:
        self._flow_blocked_by.add(queue)
        self.shell.set_reading(False)

    def flow_unblocked(self, queue: object) -> None:
        self._flow_blocked_by.discard(queue)
        if not self._flow_blocked_by and not self._reading_held() and self.state != "closed":
            self.shell.set_reading(True)

    # -- hooks --------------------------------------------------------------------------------

    def _pending_output(self) -> bool:
        """Something not yet in `out` that the next flush will add."""
        return False

    def _flush_pending(self) -> None:
        """Add it to `out` (called at every flush)."""

    def _kick_consumers(self) -> None:
        """Let this connection's consumers take messages again."""

    def _reading_held(self) -> bool:
        """Reading stays paused for another reason (a resource alarm)."""
        return False
