"""One Merpati broker node: protocol front ends, routing, queues, store, management."""

__version__ = "0.1.0"
