"""Headers exchange matching: x-match all / any / all-with-x / any-with-x, as RabbitMQ does.

With `all` and `any`, binding arguments whose name starts with "x-" take no part in matching; the
`-with-x` variants include them. A binding argument of type void matches a header of that name
whatever its value; otherwise names and values must be equal.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from ..wire.table import Int


class HeadersError(ValueError):
    pass


def _norm(value: Any) -> Any:
    if isinstance(value, Int):
        return value.value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


class _HeadersBinding:
    __slots__ = ("mode_all", "pairs", "destination", "args_key")

    def __init__(
        self, arguments: dict[str, Any], destination: Hashable, args_key: Hashable
    ) -> None:
        mode = arguments.get("x-match", "all")
        if isinstance(mode, bytes):
            mode = mode.decode("utf-8", "replace")
        if mode not in ("all", "any", "all-with-x", "any-with-x"):
            raise HeadersError(
                f"Invalid x-match field value {mode!r}; expected all, any, all-with-x, or any-with-x"
            )
        with_x = mode.endswith("-with-x")
        self.mode_all = mode.startswith("all")
        self.pairs = [
            (k, _norm(v), v is None)
            for k, v in arguments.items()
            if k != "x-match" and (with_x or not k.startswith("x-"))
        ]
        self.destination = destination
        self.args_key = args_key

    def matches(self, headers: dict[str, Any]) -> bool:
        if self.mode_all:
            for k, v, void in self.pairs:
                if k not in headers:
                    return False
                if not void and _norm(headers[k]) != v:
                    return False
            return True
        for k, v, void in self.pairs:
            if k in headers and (void or _norm(headers[k]) == v):
                return True
        return False


class HeadersMatcher:
    def __init__(self) -> None:
        self._bindings: list[_HeadersBinding] = []

    @staticmethod
    def validate(arguments: dict[str, Any]) -> None:
        _HeadersBinding(arguments, None, None)

    def add(self, arguments: dict[str, Any], destination: Hashable, args_key: Hashable) -> None:
        self._bindings.append(_HeadersBinding(arguments, destination, args_key))

    def remove(self, destination: Hashable, args_key: Hashable) -> None:
        self._bindings = [
            b
            for b in self._bindings
            if not (b.destination == destination and b.args_key == args_key)
        ]

    def match(self, headers: dict[str, Any] | None) -> set:
        headers = headers or {}
        return {b.destination for b in self._bindings if b.matches(headers)}
