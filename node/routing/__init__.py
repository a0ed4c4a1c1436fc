"""Exchange routing: which destinations a message reaches, per exchange type.

Self-contained data structures with no knowledge of queues or protocols: a matcher maps a routing
key (and headers) to the set of destinations bound to it. `Exchange` wraps one matcher per type.
"""

from .exchange import EXCHANGE_TYPES, Binding, Destination, Exchange
from .headers import HeadersMatcher
from .topic import TopicMatcher

__all__ = ["EXCHANGE_TYPES", "Binding", "Destination", "Exchange", "HeadersMatcher", "TopicMatcher"]
