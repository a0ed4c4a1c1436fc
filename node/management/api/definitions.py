"""The /api/definitions routes; the export and import themselves are in
`node/management/definitions.py`."""

from __future__ import annotations

from aiohttp import web

from .. import definitions
from ..app import json_response, read_json
from .base import ApiBase, _flag, _no_content


class DefinitionsApi(ApiBase):
    # -- definitions --------------------------------------------------------------------------

    async def definitions_get(self, request: web.Request) -> web.Response:
        self._admin(request)
        vhost = self._vhost(request) if "vhost" in request.match_info else None
        data = definitions.export(self.node, vhost)
        resp = json_response(data)
        if _flag(request, "download") or request.query.get("download"):
            resp.headers["Content-Disposition"] = (
                f'attachment; filename="{request.query.get("download")}"'
            )
        return resp

    async def definitions_post(self, request: web.Request) -> web.Response:
        self._admin(request)
        vhost = self._vhost(request) if "vhost" in request.match_info else None
        body = await read_json(request)
        await definitions.import_(self.node, body, vhost, self._propose)
        return _no_content()
