"""What a publish can come to, beyond a store token (node.broker.Broker.publish returns these).

A token >= 0 means the message was taken: 0 when it is safe now, else the store commit its confirm
waits for. The negative values are the two ways it was not.
"""

from __future__ import annotations

from .queue import REJECTED

# A queue refused the message (x-overflow reject-publish, a queue moved away, a leader down): the
# publisher gets a nack (0-9-1) or the rejected outcome (1.0).
REFUSED = REJECTED
# No queue took it (no binding matched, no alternate exchange did either).
UNROUTED = -2
