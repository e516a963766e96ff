"""Errors in Stripe's wire format: ``{"error": {"type", "message", "code", "param", ...}}``.

The official library maps the HTTP status and ``type`` to its exceptions: 400/404 to
``InvalidRequestError`` (``IdempotencyError`` for ``type: idempotency_error``), 401 to
``AuthenticationError``, 402 to ``CardError``.

``/v2`` endpoints answer the v2 shape, ``{"error": {"type", "code", "message"}}`` (plus
``param`` when one field is at fault; no ``doc_url``). The library first maps a v2
``type`` it knows (``temporary_session_expired`` to ``TemporarySessionExpiredError``,
``idempotency_error``...) and otherwise falls back to the status mapping above.
"""

from __future__ import annotations

from typing import Any


class StripeError(Exception):
    """An API error; raised by handlers and rendered by the HTTP layer.

    ``store`` marks errors that happen after a request started executing (a declined
    card): Stripe saves those under the request's ``Idempotency-Key`` and replays them,
    while validation errors are not saved, so a corrected retry with the same key works.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        store: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.extra = extra or {}
        self.headers = headers or {}
        self.store = store

    def body(self, v2: bool = False) -> dict[str, Any]:
        """The JSON body Stripe would send (``v2``: the ``/v2`` API's shape)."""
        if v2:
            shape: dict[str, Any] = {"type": self.type, "code": self.code, "message": self.message}
            if self.param is not None:
                shape["param"] = self.param
            return {"error": shape}
        error: dict[str, Any] = {"message": self.message, "type": self.type}
        if self.code is not None:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param is not None:
            error["param"] = self.param
        error.update(self.extra)
        return {"error": error}


def missing(param: str) -> StripeError:
    """``parameter_missing`` for a required param."""
    return StripeError(
        400, f"Missing required param: {param}.", code="parameter_missing", param=param
    )


def invalid(param: str | None, message: str, code: str | None = None) -> StripeError:
    """A 400 ``invalid_request_error`` about one param."""
    return StripeError(400, message, code=code, param=param)


def no_such(kind: str, object_id: str, param: str | None = None) -> StripeError:
    """``resource_missing``: 404 when the URL names it, 400 when a param references it."""
    return StripeError(
        404 if param is None else 400,
        f"No such {kind}: '{object_id}'",
        code="resource_missing",
        param=param or "id",
    )
