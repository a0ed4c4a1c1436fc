"""Failed logins counted per source address, so that guessing passwords is slow.

A source that fails LIMIT logins within WINDOW seconds is refused without a password check until
the oldest of those failures is WINDOW old: a client that mistyped a password a few times is not
affected, a password-guessing loop gets LIMIT tries per WINDOW. Loopback sources are not
counted (a local process can read the node's files anyway, and test suites and health checks
log in from there). The table is bounded: past MAX_SOURCES, the source seen longest ago goes.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

LIMIT = 10
WINDOW = 10.0
MAX_SOURCES = 65536


class LoginThrottle:
    def __init__(
        self,
        limit: int = LIMIT,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def blocked_for(self, source: str) -> float:
        """Seconds `source` must wait before its next login is checked (0: go on)."""
        times = self._failures.get(source)
        if times is None:
            return 0.0
        now = self.clock()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[source]
            return 0.0
        if len(times) < self.limit:
            return 0.0
        return times[0] + self.window - now

    def failed(self, source: str) -> bool:
        """Count a failed login; True when it is the one that reaches the limit (log it)."""
        times = self._failures.get(source)
        if times is None:
            times = self._failures[source] = deque(maxlen=self.limit)
            if len(self._failures) > MAX_SOURCES:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(source)
        times.append(self.clock())
        return len(times) == self.limit and self.blocked_for(source) > 0
