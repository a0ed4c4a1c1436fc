"""The AMQP data model both protocol front ends and the core share: field tables and the property list.

`table` holds the field-table value types and codec (RabbitMQ's errata type letters) and `properties`
the basic-class property list. They started life in the 0-9-1 front end, but the core stores, routes
(headers exchange), dead-letters and forwards messages by these encodings whatever protocol a message
arrived in, and the 1.0 front end converts to and from them; so they live here, and neither the core
nor the 1.0 front end imports the 0-9-1 front end.
"""
