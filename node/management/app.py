"""The management HTTP API's shell: aiohttp app, basic auth with Merpati users, errors as JSON.

Who may do what, as RabbitMQ's user tags say: `administrator` may do everything; `monitoring`
reads everything; `policymaker` also manages policies of its vhosts; `management` reads the vhosts
it has permissions in. Users without any of these tags cannot use the API (401, as RabbitMQ).
The routes and their handlers live in the `api/` package (one module per resource, the route
table in `api/routes.py`); export/import of definitions in `definitions.py`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..broker import AuthError
from ..metadata.state import MetadataError

if TYPE_CHECKING:
    from ..server import Node

UI_DIR = Path(__file__).resolve().parent / "ui"
MGMT_TAGS = {"administrator", "monitoring", "policymaker", "management"}
USER_KEY = "merpati.user"


class ApiError(Exception):
    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason


def bad_request(reason: str) -> ApiError:
    return ApiError(400, "bad_request", reason)


def not_found(reason: str = "Not Found") -> ApiError:
    return ApiError(404, "Object Not Found", reason)


def not_authorised(reason: str) -> ApiError:
    return ApiError(401, "not_authorised", reason)


def from_metadata_error(e: MetadataError) -> ApiError:
    if e.code == 404:
        return not_found(e.text)
    if e.code == 403:
        return not_authorised(e.text)
    return bad_request(e.text)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(data), content_type="application/json", charset="utf-8"
    )


def _error_response(e: ApiError, request: web.Request | None = None) -> web.Response:
    resp = json_response({"error": e.error, "reason": e.reason}, e.status)
    # The web UI asks with X-Requested-With and shows its own login form on a 401: without the
    # challenge the browser does not pop up its basic-auth dialog over the page.
    from_ui = request is not None and "X-Requested-With" in request.headers
    if e.status == 401 and not from_ui:
        resp.headers["WWW-Authenticate"] = 'Basic realm="RabbitMQ Management"'
    return resp


class Caller:
    """The authenticated user of a request."""

    def __init__(self, name: str, tags: tuple[str, ...]) -> None:
        self.name = name
        self.tags = set(tags)

    @property
    def is_admin(self) -> bool:
        return "administrator" in self.tags

    @property
    def sees_all(self) -> bool:
        return bool(self.tags & {"administrator", "monitoring"})


def _loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return remote is not None and remote.startswith("/")  # unix socket


def authenticate(node: Node, request: web.Request) -> Caller:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Basic "):
        raise not_authorised("Login failed")
    try:
        user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise not_authorised("Login failed")
    broker = node.broker
    try:
        broker.authenticate(user, password, _loopback(request.remote), request.remote)
    except AuthError:
        raise not_authorised("Login failed")
    tags = broker.state.users[user].tags
    if not MGMT_TAGS & set(tags):
        raise not_authorised("Not management user")
    return Caller(user, tags)


def _missing_object(e: Exception) -> bool:
    if isinstance(e, ApiError):
        return e.status == 404 and e.reason.startswith("no ")
    return isinstance(e, MetadataError) and e.code == 404


def management_app(node: Node) -> web.Application:
    from .api import ManagementApi

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            if node.broker is None:
                raise ApiError(503, "not_ready", "node is starting")
            if request.path.startswith("/api/"):
                request[USER_KEY] = authenticate(node, request)
            try:
                return await handler(request)
            except (ApiError, MetadataError) as e:
                # A name another node created a moment ago (a load balancer, or --workers'
                # shared port, may send the next request to a node that has not applied it
                # yet): answer once this node caught up (Broker.caught_up).
                if not _missing_object(e):
                    raise
                caught_up = node.broker.caught_up()
                if caught_up is None:
                    raise
                await caught_up
                return await handler(request)
        except ApiError as e:
            return _error_response(e, request)
        except MetadataError as e:
            return _error_response(from_metadata_error(e), request)
        except web.HTTPNotFound:
            return _error_response(not_found(), request)
        except web.HTTPMethodNotAllowed:
            return _error_response(
                ApiError(405, "method_not_allowed", "Method Not Allowed"), request
            )

    app = web.Application(middlewares=[middleware], client_max_size=64 * 1024 * 1024)
    api = ManagementApi(node)
    api.register(app.router)
    # The web UI (ui/): static files, no credentials needed to load them; its API calls carry
    # them. Revalidated on each load (Last-Modified), so an upgraded node serves its own UI.
    app.router.add_static("/ui/", UI_DIR, append_version=False)

    # The rate history samples on its own timer for as long as the listener serves.
    async def start_rates(_app: web.Application) -> None:
        api.rates.start()

    async def stop_rates(_app: web.Application) -> None:
        await api.rates.stop()

    app.on_startup.append(start_rates)
    app.on_cleanup.append(stop_rates)
    return app


def caller(request: web.Request) -> Caller:
    return request[USER_KEY]  # type: ignore[no-any-return]


async def read_json(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise bad_request(f"body is not valid JSON: {e}")
    if not isinstance(body, dict):
        raise bad_request("body must be a JSON object")
    return body
