"""The protocol-neutral broker core: messages, queues, consumers and settlement outcomes."""
