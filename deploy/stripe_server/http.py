"""HTTP handling: routing, auth, ``Idempotency-Key``, ``expand[]``, JSON, one log line each.

``/v1/...`` behaves like Stripe's API for the official client: bearer auth with any
``sk_test_`` key (HTTP Basic with the key as user also works), form-encoded params,
JSON answers with ``Request-Id`` and ``Stripe-Version`` headers, Stripe-format errors.
``/v2/...`` takes JSON bodies and answers v2-shaped errors; the meter event stream is
authorized by a meter event session's token (checked under the state lock, before the
``Idempotency-Key`` lookup) instead of a secret key.

Idempotency follows Stripe: every POST/DELETE with an ``Idempotency-Key`` saves its
result (successes and card errors — requests that failed validation are not saved);
the same key with the same method, path and params replays the saved response with
``Idempotent-Replayed: true``; with anything different it is a 400
``idempotency_error``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import urlsplit

from . import billing, core, pages, payments, testing  # noqa: F401 - they register routes
from .errors import StripeError
from .formdata import decode, decode_body, decode_json, expand_paths
from .objects import new_id
from .routing import Ctx, Response, Route, match
from .state import IdempotentResult, State, expand

log = logging.getLogger("deploy.stripe_server")

Answer = tuple[int, bytes, str, dict[str, str]]
JSON = "application/json"


def _json(data: Any) -> bytes:
    return json.dumps(data, indent=2).encode("utf-8")


def _error(err: StripeError, v2: bool = False) -> Answer:
    return err.status, _json(err.body(v2)), JSON, dict(err.headers)


def _is_v2(path: str) -> bool:
    return path.startswith("/v2/")


class StripeHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that carries the :class:`State` its handlers use."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: State) -> None:
        super().__init__(address, RequestHandler)
        self.state = state


class RequestHandler(BaseHTTPRequestHandler):
    """Serves one connection (keep-alive) of requests against the server's state."""

    protocol_version = "HTTP/1.1"
    server_version = "stripe-test-server/1.0"
    disable_nagle_algorithm = True  # headers and body go out in two writes

    def do_GET(self) -> None:
        """Handle GET."""
        self._handle("GET")

    def do_POST(self) -> None:
        """Handle POST."""
        self._handle("POST")

    def do_DELETE(self) -> None:
        """Handle DELETE."""
        self._handle("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log (one line per request goes to logging)."""

    @property
    def state(self) -> State:
        """The server's state."""
        return cast(StripeHTTPServer, self.server).state

    def _handle(self, method: str) -> None:
        started = time.monotonic()
        note = ""
        try:
            status, body, content_type, headers = self._answer(method)
            note = " (replayed)" if headers.get("Idempotent-Replayed") else ""
        except Exception:
            log.exception("%s %s failed", method, self.path)
            err = StripeError(
                500, "An internal error occurred in the test server.", type="api_error"
            )
            status, body, content_type, headers = _error(err, _is_v2(self.path))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)
        log.info(
            "%s %s -> %d %.1fms%s",
            method,
            urlsplit(self.path).path,
            status,
            (time.monotonic() - started) * 1000,
            note,
        )

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _answer(self, method: str) -> Answer:
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        v2 = _is_v2(path)
        body = self._read_body()
        found, args, _known = match(method, path)
        if found is None:
            if path.startswith(("/v1/", "/v2/")):
                return _error(
                    StripeError(
                        404,
                        f"Unrecognized request URL ({method}: {path}). Please see "
                        "https://stripe.com/docs or we can help at https://support.stripe.com/.",
                    ),
                    v2,
                )
            return 404, b"Not found\n", "text/plain; charset=utf-8", {}
        request_id = new_id("req_", 14)
        headers = {"Request-Id": request_id}
        stream_token: str | None = None
        if found.kind in ("api", "meter_stream"):
            if found.kind == "meter_stream":
                stream_token = self._bearer()
            elif not self._authorized():
                return _error(
                    StripeError(
                        401,
                        "Invalid API Key provided: this test server accepts any sk_test_ key "
                        "as a Bearer token.",
                    ),
                    v2,
                )
            headers["Stripe-Version"] = (
                self.headers.get("Stripe-Version") or self.state.options.api_version
            )
        try:
            if v2:
                params = decode_json(body, self.headers.get("Content-Type", ""))
            else:
                params = decode(url.query)
                if body:
                    params.update(decode_body(body, self.headers.get("Content-Type", "")))
        except StripeError as err:
            status, data, content_type, extra = _error(err, v2)
            return status, data, content_type, headers | extra
        key = self.headers.get("Idempotency-Key") or None
        if found.kind not in ("api", "meter_stream") or method not in ("POST", "DELETE"):
            key = None
        if key is not None:
            headers["Idempotency-Key"] = key
        ctx = Ctx(self.state, method, path, args, params, dict(self.headers.items()))
        if not found.locked:
            (status, data, content_type, extra), _save = self._run(found, ctx)
            return status, data, content_type, headers | extra
        with self.state.lock:
            if stream_token is not None:
                try:
                    self.state.check_meter_session(stream_token)
                except StripeError as err:
                    status, data, content_type, extra = _error(err, v2)
                    return status, data, content_type, headers | extra
            return self._run_locked(found, ctx, key, request_id, headers)

    def _run_locked(
        self, found: Route, ctx: Ctx, key: str | None, request_id: str, headers: dict[str, str]
    ) -> Answer:
        state = ctx.state
        v2 = _is_v2(ctx.path)
        if key is not None:
            saved = state.idempotency.get(key)
            if saved is not None:
                same = (saved.method, saved.path, saved.params) == (
                    ctx.method,
                    ctx.path,
                    ctx.params,
                )
                if not same:
                    err = StripeError(
                        400,
                        "Keys for idempotent requests can only be used with the same parameters "
                        "they were first used with. Try using a key other than "
                        f"'{key}' if you meant to execute a different request.",
                        type="idempotency_error",
                        headers={"Stripe-Should-Retry": "false"},
                    )
                    status, data, content_type, extra = _error(err, v2)
                    return status, data, content_type, headers | extra
                return (
                    saved.status,
                    saved.body,
                    JSON,
                    headers | {"Idempotent-Replayed": "true", "Original-Request": saved.request_id},
                )
        if found.kind in ("api", "meter_stream"):
            state.request_context = {"id": request_id, "idempotency_key": key}
        else:
            state.request_context = {"id": None, "idempotency_key": None}
        try:
            (status, data, content_type, extra), save = self._run(found, ctx)
        finally:
            state.request_context = {"id": None, "idempotency_key": None}
        if key is not None and save:
            state.idempotency[key] = IdempotentResult(
                ctx.method, ctx.path, ctx.params, status, data, request_id
            )
        return status, data, content_type, headers | extra

    def _run(self, found: Route, ctx: Ctx) -> tuple[Answer, bool]:
        """Call the handler; JSON-encode (and expand) dict results; render errors.

        The flag says whether an ``Idempotency-Key`` should keep the result: successes and
        errors raised after the request took effect (``StripeError.store``).
        """
        v2 = _is_v2(ctx.path)
        try:
            result = found.handler(ctx)
        except StripeError as err:
            return _error(err, v2), err.store
        if isinstance(result, Response):
            answer = (result.status, result.body, result.content_type, dict(result.headers))
            return answer, result.status < 400
        try:
            paths = expand_paths(ctx.params)
            data = _json(expand(ctx.state, result, paths) if paths else result)
        except StripeError as err:
            return _error(err, v2), False
        return (200, data, JSON, {}), True

    def _bearer(self) -> str:
        """The ``Authorization: Bearer`` credential ("" without one)."""
        header = self.headers.get("Authorization", "")
        return header[len("Bearer ") :].strip() if header.startswith("Bearer ") else ""

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        api_key = ""
        if header.startswith("Bearer "):
            api_key = header[len("Bearer ") :].strip()
        elif header.startswith("Basic "):
            try:
                decoded = base64.b64decode(header[len("Basic ") :].strip()).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return False
            api_key = decoded.split(":", 1)[0]
        return api_key.startswith("sk_test_") and len(api_key) > len("sk_test_")
