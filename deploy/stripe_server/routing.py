"""The route table: handlers register themselves with :func:`route`.

Four kinds of route:

* ``api`` — ``/v1/...`` and ``/v2/...``: needs ``Authorization: Bearer sk_test_...``,
  answers JSON, honours ``Idempotency-Key`` on POST and DELETE, supports ``expand[]``
  (``/v1``). ``/v2`` paths take JSON bodies (handlers see them as parsed, not
  stringified) and answer v2-shaped errors.
* ``meter_stream`` — ``POST /v2/billing/meter_event_stream``: like a ``/v2`` ``api``
  route, but authorized by an unexpired meter event session's ``authentication_token``
  instead of a secret key.
* ``test`` — ``/_test/...``: test-only controls, no auth, JSON (form or JSON bodies).
* ``page`` — the browser pages (hosted checkout, hosted invoice, PDF, receipt).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from .formdata import Params
from .state import State

Kind = Literal["api", "meter_stream", "test", "page"]


@dataclass
class Response:
    """A non-JSON (or non-200) answer from a handler."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Ctx:
    """One request as handlers see it."""

    state: State
    method: str
    path: str
    args: dict[str, str]
    params: Params
    headers: dict[str, str]


Handler = Callable[[Ctx], "dict[str, Any] | Response"]


@dataclass(frozen=True)
class Route:
    """A method and path pattern bound to a handler."""

    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler
    kind: Kind
    locked: bool


ROUTES: list[Route] = []


def route(
    method: str, template: str, kind: Kind = "api", *, locked: bool = True
) -> Callable[[Handler], Handler]:
    """Register the decorated handler for ``method`` and a path like ``/v1/customers/{id}``.

    ``locked`` handlers run holding the state lock (all but the ones that wait).
    """
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
    pattern = re.compile(f"^{regex}$")

    def register(handler: Handler) -> Handler:
        ROUTES.append(Route(method, template, pattern, handler, kind, locked))
        return handler

    return register


def match(method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
    """The route for a request, its path args, and whether the path exists for any method."""
    path_known = False
    for candidate in ROUTES:
        found = candidate.pattern.match(path)
        if found is None:
            continue
        path_known = True
        if candidate.method == method:
            return candidate, found.groupdict(), True
    return None, {}, path_known
