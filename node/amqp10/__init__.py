"""AMQP 1.0 front end: a sans-I/O codec and state machine of Merpati's own.

Modules: `codec` (the type system), `performatives` (composites, SASL frames, a hand-written fast
transfer decoder), `message` (sections ↔ the core message, RabbitMQ's conversion table),
`connection` (SASL, open/close, idle timeout, framing), `session` (windows, delivery-ids,
settlement, attach/detach), `links` (SenderLink and ReceiverLink: credit, transfers, publishing),
`addresses` (RabbitMQ 4 v2 addresses). The shared listener (node.listener) picks this
front end when a client opens with `AMQP 3 1 0 0` or `AMQP 0 1 0 0`.

Why not python-qpid-proton's engine: measured with bench/amqp10_engine.py on the same 100-byte
unsettled transfers, this engine spends about 15-17 µs of server CPU per message for the whole
publish path (decode, conversion, routing, enqueue, accepted), where proton's engine driven from
Python spends about 60 µs in the engine alone (86 µs with Message.decode); proton also has no
Linux wheel (its sdist compiles in ~30 s) and, without Cyrus SASL, offers only ANONYMOUS server-side.
"""
