"""The management HTTP API: RabbitMQ's paths and JSON shapes (the subset tools and scripts use).

`app.management_app(node)` builds the aiohttp application the node serves on `--management-port`;
`api` holds the routes, `views` the JSON shapes, `definitions` export/import.
"""
