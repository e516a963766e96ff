"""The server's in-memory state: objects, meter events, idempotency results, events.

Everything is guarded by one re-entrant lock: the HTTP layer holds it for the whole of
each API call, so handlers see a consistent world and never interleave. Webhook
delivery runs on its own thread and only takes the lock briefly to record results.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from . import objects
from .errors import StripeError, invalid, no_such
from .formdata import Params, get_int, get_str
from .objects import Obj
from .webhooks import WebhookDispatcher

DEFAULT_API_VERSION = "2026-10-28.endive"
"""The API version stripe-python 16.1 pins; events carry it as ``api_version``."""

METER_IDENTIFIER_WINDOW = 24 * 3600
"""Seconds a meter event ``identifier`` stays unique (Stripe: "at least 24 hours")."""

METER_SESSION_LIFETIME = 15 * 60
"""Seconds a v2 meter event session's ``authentication_token`` is valid (Stripe: 15 min)."""

METER_SESSION_KEPT = 24 * 3600
"""Seconds an expired session is remembered (its token answers "expired", not "invalid")."""


@dataclass
class MeterEventRecord:
    """One accepted meter event (the object answered plus what aggregation needs)."""

    event_name: str
    payload: dict[str, str]
    timestamp: int
    identifier: str
    created: int


@dataclass(frozen=True)
class MeterEventSession:
    """A v2 meter event session: a short-lived token for ``/v2/billing/meter_event_stream``."""

    id: str
    authentication_token: str
    created: int
    expires_at: int


@dataclass
class IdempotentResult:
    """A saved response for an ``Idempotency-Key``."""

    method: str
    path: str
    params: Params
    status: int
    body: bytes
    request_id: str


@dataclass
class Options:
    """Behaviour switches (set at start, most also through ``POST /_test/config``)."""

    api_version: str = DEFAULT_API_VERSION
    enabled_events: list[str] = field(default_factory=lambda: ["*"])
    set_default_payment_method_on_checkout: bool = True
    account_name: str = "Cango (Stripe test server)"


class State:
    """All objects and bookkeeping of one server; use under :attr:`lock`."""

    def __init__(
        self,
        dispatcher: WebhookDispatcher,
        public_url: Callable[[], str],
        options: Options | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self.dispatcher = dispatcher
        self._public_url = public_url
        self.options = options or Options()
        self.request_context: Obj = {"id": None, "idempotency_key": None}
        self.reset()

    def reset(self) -> None:
        """Forget every object, event, saved response and test switch."""
        with self.lock:
            self.objects: dict[str, Obj] = {}
            self.internal: dict[str, dict[str, Any]] = {}
            self.meter_events: list[MeterEventRecord] = []
            self.meter_identifiers: dict[str, int] = {}
            self.meter_sessions: dict[str, MeterEventSession] = {}
            self.idempotency: dict[str, IdempotentResult] = {}
            self.decline_next: dict[str, list[str]] = {}
            self.clock_offset = 0

    # --- time and urls -----------------------------------------------------------------

    def now(self) -> int:
        """The server's clock (unix seconds), shifted by ``POST /_test/clock``."""
        return int(time.time()) + self.clock_offset

    @property
    def public_url(self) -> str:
        """Where browsers reach this server (checkout and invoice pages)."""
        return self._public_url()

    # --- storage -------------------------------------------------------------------------

    def put(self, obj: Obj, **internal: Any) -> Obj:
        """Store a new object (and hidden per-object data); returns it."""
        self.objects[obj["id"]] = obj
        if internal:
            self.internal.setdefault(obj["id"], {}).update(internal)
        return obj

    def hidden(self, object_id: str) -> dict[str, Any]:
        """Hidden data kept beside an object (never sent to clients)."""
        return self.internal.setdefault(object_id, {})

    def get(self, kind: str, object_id: str, *, param: str | None = None, label: str = "") -> Obj:
        """The stored object of type ``kind`` (``"customer"``...) or Stripe's ``No such``."""
        obj = self.objects.get(object_id)
        if obj is None or obj.get("object") != kind:
            raise no_such(label or kind.split(".")[-1].replace("_", " "), object_id, param)
        return obj

    def all(self, kind: str, where: Callable[[Obj], bool] | None = None) -> list[Obj]:
        """Objects of one type, newest first (Stripe's list order)."""
        return [
            obj
            for obj in reversed(self.objects.values())
            if obj.get("object") == kind and (where is None or where(obj))
        ]

    # --- events --------------------------------------------------------------------------

    def emit(self, type_: str, obj: Obj, previous_attributes: Obj | None = None) -> Obj:
        """Record an event with a snapshot of ``obj`` and queue it for delivery."""
        created = self.now()
        evt = objects.event(
            objects.new_id("evt_"),
            created,
            type_,
            obj,
            self.options.api_version,
            dict(self.request_context),
            previous_attributes,
        )
        deliver = self.dispatcher.configured() and self._enabled(type_)
        evt["pending_webhooks"] = 1 if deliver else 0
        self.put(evt)
        if deliver:
            self.dispatcher.enqueue(evt["id"], type_, self.event_body(evt))
        return evt

    def _enabled(self, type_: str) -> bool:
        enabled = self.options.enabled_events
        return "*" in enabled or type_ in enabled

    @staticmethod
    def event_body(evt: Obj) -> bytes:
        """The JSON body a webhook delivery sends for an event."""
        return json.dumps(evt, indent=2).encode("utf-8")

    def delivery_result(self, event_id: str, ok: bool) -> None:
        """Called by the dispatcher: a delivered event has no pending webhooks left."""
        with self.lock:
            evt = self.objects.get(event_id)
            if evt is not None and ok:
                evt["pending_webhooks"] = 0

    def resend(self, event_id: str) -> Obj:
        """Queue an already recorded event for delivery again."""
        evt = self.get("event", event_id)
        if not self.dispatcher.configured():
            raise invalid(None, "No webhook URL and secret are configured.")
        evt["pending_webhooks"] = 1
        self.dispatcher.enqueue(evt["id"], evt["type"], self.event_body(evt), resend=True)
        return evt

    # --- meter events --------------------------------------------------------------------

    def record_meter_event(self, record: MeterEventRecord) -> bool:
        """Count an accepted meter event; False (and nothing kept) for an identifier seen
        in the last :data:`METER_IDENTIFIER_WINDOW` seconds (by ``record.created``)."""
        seen = self.meter_identifiers.get(record.identifier)
        if seen is not None and record.created - seen < METER_IDENTIFIER_WINDOW:
            return False
        self.meter_identifiers[record.identifier] = record.created
        self.meter_events.append(record)
        return True

    def new_meter_session(self, session: MeterEventSession) -> None:
        """Keep a new session; forget sessions expired more than a day ago."""
        stale = [
            token
            for token, old in self.meter_sessions.items()
            if session.created - old.expires_at > METER_SESSION_KEPT
        ]
        for token in stale:
            del self.meter_sessions[token]
        self.meter_sessions[session.authentication_token] = session

    def check_meter_session(self, token: str) -> MeterEventSession:
        """The live session for a stream token, else the 401 Stripe answers (v2 shape)."""
        session = self.meter_sessions.get(token) if token else None
        if session is None:
            raise StripeError(
                401,
                "Invalid authentication token: the meter event stream takes the "
                "authentication_token of a meter event session (POST "
                "/v2/billing/meter_event_session), not an API key.",
                code="unauthorized",
            )
        if self.now() >= session.expires_at:
            raise StripeError(
                401,
                f"The meter event session {session.id} expired; create a new one.",
                type="temporary_session_expired",
                code="billing_meter_event_session_expired",
            )
        return session

    # --- meter usage ---------------------------------------------------------------------

    def usage(
        self,
        meter: Obj,
        customer_id: str,
        start: int,
        end: int,
    ) -> Decimal:
        """A meter's aggregated value for one customer over ``[start, end)``."""
        customer_key = meter["customer_mapping"]["event_payload_key"]
        value_key = meter["value_settings"]["event_payload_key"]
        formula = meter["default_aggregation"]["formula"]
        matching = [
            record
            for record in self.meter_events
            if record.event_name == meter["event_name"]
            and record.payload.get(customer_key) == customer_id
            and start <= record.timestamp < end
        ]
        if formula == "count":
            return Decimal(len(matching))
        values = [Decimal(record.payload[value_key]) for record in matching]
        if formula == "last":
            latest = max(matching, key=lambda r: (r.timestamp, r.created), default=None)
            return Decimal(latest.payload[value_key]) if latest is not None else Decimal(0)
        return sum(values, Decimal(0))


def paginate(items: Sequence[Obj], params: Params, url: str) -> Obj:
    """A list page with Stripe's ``limit`` / ``starting_after`` / ``ending_before``."""
    limit = get_int(params, "limit", minimum=1)
    limit = 10 if limit is None else limit
    if limit > 100:
        raise invalid("limit", "Invalid limit: must be at most 100", "parameter_invalid_integer")
    after = get_str(params, "starting_after")
    before = get_str(params, "ending_before")
    ids = [item.get("id") for item in items]
    if after is not None:
        if after not in ids:
            raise no_such("object", after, "starting_after")
        rest = list(items[ids.index(after) + 1 :])
        return objects.list_object(rest[:limit], url, has_more=len(rest) > limit)
    if before is not None:
        if before not in ids:
            raise no_such("object", before, "ending_before")
        head = list(items[: ids.index(before)])
        return objects.list_object(head[-limit:], url, has_more=len(head) > limit)
    return objects.list_object(list(items[:limit]), url, has_more=len(items) > limit)


def expand(state: State, value: Any, paths: Iterable[str]) -> Any:
    """A deep copy of ``value`` with the dotted ``expand[]`` paths replaced by objects."""
    out = copy.deepcopy(value)
    for path in paths:
        out = _expand_one(state, out, path.split("."))
    return out


def _expand_one(state: State, value: Any, parts: list[str]) -> Any:
    if not parts:
        return value
    if isinstance(value, list):
        return [_expand_one(state, item, parts) for item in value]
    if not isinstance(value, dict):
        return value
    head, rest = parts[0], parts[1:]
    if head not in value:
        raise StripeError(
            400,
            f"This property cannot be expanded ({head}).",
            param="expand",
        )
    child = value[head]
    if isinstance(child, str) and child in state.objects:
        child = copy.deepcopy(state.objects[child])
    value[head] = _expand_one(state, child, rest)
    return value
