"""Stripe's form encoding: ``a[b][0][c]=v`` into nested dicts, and typed param readers.

Stripe's v1 API takes ``application/x-www-form-urlencoded`` bodies (and query strings
for GET) whose keys nest with brackets. :func:`decode` turns them into nested dicts of
strings; a bracketed index (``items[0][price]``) stays a dict keyed ``"0"`` and the
handlers read such arrays with :func:`as_list`. Empty brackets (``expand[]``) append.
The v2 API takes JSON instead (:func:`decode_json`).

The ``get_*`` readers coerce one parameter and raise Stripe's own errors
(``parameter_missing``, ``parameter_invalid_integer``, ...) naming the full param path.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from .errors import StripeError, invalid, missing

Params = dict[str, Any]

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")


def decode(text: str) -> Params:
    """Decode a form-encoded body or query string into nested dicts of strings."""
    root: Params = {}
    for raw_key, value in parse_qsl(text, keep_blank_values=True):
        match = _KEY.match(raw_key)
        if match is None:
            raise invalid(raw_key, f"Invalid parameter name: {raw_key}")
        parts = [match.group(1), *_PART.findall(match.group(2))]
        node = root
        for depth, part in enumerate(parts):
            key = part if part != "" else str(len(node))
            last = depth == len(parts) - 1
            if last:
                if isinstance(node.get(key), dict):
                    raise invalid(raw_key, f"Invalid value for {raw_key}: an object is expected")
                node[key] = value
            else:
                child = node.setdefault(key, {})
                if not isinstance(child, dict):
                    raise invalid(raw_key, f"Invalid value for {raw_key}: a string is expected")
                node = child
    return root


def decode_body(body: bytes, content_type: str) -> Params:
    """Decode a request body: form-encoded (Stripe's format) or, for test endpoints, JSON."""
    if not body:
        return {}
    if content_type.split(";")[0].strip().lower() == "application/json":
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise invalid(None, f"Invalid JSON body: {exc}") from exc
        if not isinstance(data, dict):
            raise invalid(None, "The JSON body must be an object.")
        return _stringify(data)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(None, "The request body is not UTF-8.") from exc
    return decode(text)


def decode_json(body: bytes, content_type: str) -> Params:
    """A ``/v2`` request body: a JSON object kept as parsed (lists, numbers and all).

    Stripe's v2 API takes ``application/json``; an empty body is ``{}``.
    """
    if not body:
        return {}
    media = content_type.split(";")[0].strip().lower()
    if media not in ("", "application/json"):
        raise invalid(None, f"The /v2 API takes JSON bodies (Content-Type {media} given).")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise invalid(None, f"Invalid JSON body: {exc}") from exc
    if not isinstance(data, dict):
        raise invalid(None, "The JSON body must be an object.")
    return data


def _stringify(value: Any) -> Any:
    """JSON values as the form decoder would give them: strings, dicts, index-keyed dicts."""
    if isinstance(value, dict):
        return {str(k): _stringify(v) for k, v in value.items()}
    if isinstance(value, list):
        return {str(i): _stringify(v) for i, v in enumerate(value)}
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def as_list(value: Any, param: str) -> list[Any]:
    """An array param: a dict keyed ``"0"``, ``"1"``... (from brackets) as a list in order."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        if not all(k.isdigit() for k in value):
            raise invalid(param, f"Invalid array: {param}")
        return [value[k] for k in sorted(value, key=int)]
    if isinstance(value, str) and value == "":
        return []
    raise invalid(param, f"Invalid array: {param}")


def check_params(params: Params, allowed: set[str], prefix: str = "") -> None:
    """Reject parameters the endpoint does not know, as Stripe does (``parameter_unknown``)."""
    for key in params:
        if key not in allowed and key != "expand":
            name = f"{prefix}[{key}]" if prefix else key
            raise StripeError(
                400,
                f"Received unknown parameter: {name}",
                code="parameter_unknown",
                param=name,
            )


def _name(prefix: str, key: str) -> str:
    return f"{prefix}[{key}]" if prefix else key


def get_str(
    params: Params,
    key: str,
    *,
    required: bool = False,
    prefix: str = "",
    choices: tuple[str, ...] | None = None,
    max_length: int = 5000,
) -> str | None:
    """A string param; ``""`` means unset (``None``), as in Stripe's form encoding."""
    name = _name(prefix, key)
    value = params.get(key)
    if value is None or value == "":
        if required:
            raise missing(name)
        return None
    if not isinstance(value, str):
        raise invalid(name, f"Invalid string: {name} must be a string")
    if len(value) > max_length:
        raise invalid(name, f"Invalid string: {name} must be at most {max_length} characters")
    if choices is not None and value not in choices:
        raise StripeError(
            400,
            f"Invalid {name}: must be one of {', '.join(choices)}",
            code="parameter_invalid_string",
            param=name,
        )
    return value


def need_str(params: Params, key: str, *, prefix: str = "", **kwargs: Any) -> str:
    """A required string param."""
    value = get_str(params, key, required=True, prefix=prefix, **kwargs)
    if value is None:
        raise missing(_name(prefix, key))
    return value


def get_int(
    params: Params,
    key: str,
    *,
    required: bool = False,
    prefix: str = "",
    minimum: int | None = None,
) -> int | None:
    """An integer param."""
    name = _name(prefix, key)
    value = params.get(key)
    if value is None or value == "":
        if required:
            raise missing(name)
        return None
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise StripeError(
            400,
            f"Invalid integer: {value if isinstance(value, str) else name}",
            code="parameter_invalid_integer",
            param=name,
        )
    number = int(value)
    if minimum is not None and number < minimum:
        raise StripeError(
            400,
            f"Invalid integer: {name} must be at least {minimum}",
            code="parameter_invalid_integer",
            param=name,
        )
    return number


def need_int(params: Params, key: str, *, prefix: str = "", minimum: int | None = None) -> int:
    """A required integer param."""
    value = get_int(params, key, required=True, prefix=prefix, minimum=minimum)
    if value is None:
        raise missing(_name(prefix, key))
    return value


def get_bool(params: Params, key: str, *, prefix: str = "") -> bool | None:
    """A boolean param (``true``/``false``)."""
    name = _name(prefix, key)
    value = params.get(key)
    if value is None or value == "":
        return None
    if value in ("true", "false"):
        return value == "true"
    raise StripeError(400, f"Invalid boolean: {value}", code="parameter_invalid_string", param=name)


def get_decimal(
    params: Params, key: str, *, required: bool = False, prefix: str = "", max_places: int = 12
) -> Decimal | None:
    """A decimal-string param (``unit_amount_decimal``, a meter value...)."""
    name = _name(prefix, key)
    value = params.get(key)
    if value is None or value == "":
        if required:
            raise missing(name)
        return None
    try:
        number = Decimal(value) if isinstance(value, str) else Decimal("nan")
    except InvalidOperation:
        number = Decimal("nan")
    if not number.is_finite():
        raise StripeError(
            400, f"Invalid decimal: {value}", code="parameter_invalid_string", param=name
        )
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > max_places:
        raise invalid(name, f"Invalid decimal: {name} has more than {max_places} decimal places")
    return number


def get_dict(params: Params, key: str, *, required: bool = False, prefix: str = "") -> Params:
    """A hash param (``{}`` when absent)."""
    name = _name(prefix, key)
    value = params.get(key)
    if value is None or value == "":
        if required:
            raise missing(name)
        return {}
    if not isinstance(value, dict):
        raise invalid(name, f"Invalid object: {name} must be an object")
    return value


def get_metadata(params: Params, key: str = "metadata", *, prefix: str = "") -> dict[str, str]:
    """A ``metadata`` hash; checked against Stripe's limits (50 keys, 40/500 characters)."""
    name = _name(prefix, key)
    raw = get_dict(params, key, prefix=prefix)
    if len(raw) > 50:
        raise invalid(name, "Invalid metadata: at most 50 keys are allowed")
    out: dict[str, str] = {}
    for meta_key, meta_value in raw.items():
        if not isinstance(meta_value, str):
            raise invalid(f"{name}[{meta_key}]", "Invalid metadata: values must be strings")
        if len(meta_key) > 40:
            raise invalid(f"{name}[{meta_key}]", "Invalid metadata: keys are at most 40 characters")
        if len(meta_value) > 500:
            raise invalid(
                f"{name}[{meta_key}]", "Invalid metadata: values are at most 500 characters"
            )
        out[meta_key] = meta_value
    return out


def merge_metadata(current: dict[str, str], update: Params) -> dict[str, str]:
    """Apply a metadata update: new keys are set, keys sent empty are removed."""
    merged = dict(current)
    for meta_key, meta_value in update.items():
        if meta_value == "":
            merged.pop(meta_key, None)
        else:
            merged[meta_key] = meta_value
    return merged


def expand_paths(params: Params) -> list[str]:
    """The ``expand[]`` param as a list of dotted paths."""
    return [str(p) for p in as_list(params.get("expand"), "expand")]
