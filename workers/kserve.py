"""Codec for the KServe v2 / Open Inference Protocol HTTP/REST format.

Covers the JSON form of ``POST /v2/models/{model}/infer`` and Triton's *binary tensor
data* extension, in which the body is a JSON header followed by raw tensor bytes:

* The ``Inference-Header-Content-Length`` HTTP header gives the byte length of the JSON
  header; when it is absent the whole body is JSON.
* An input (or output) sent as binary carries ``"parameters": {"binary_data_size": N}``
  instead of ``"data"``; the binary sections follow the JSON header back to back, in the
  order of the tensors that have one.
* Binary tensor data is little-endian, row-major, unpadded. ``BOOL`` is one byte (0 or
  1); each ``BYTES`` element is a 4-byte little-endian unsigned length followed by that
  many bytes.
* A requested output asks for binary data with ``"parameters": {"binary_data": true}``
  (or the whole request with the request parameter ``"binary_data_output": true``).

The request side (:func:`request_parse`, :func:`request_validate`) sits on the hot path
of every synchronous inference call, so it works on the caller's ``bytes`` without
copying tensor data (binary inputs are ``memoryview`` slices of the body) and checks JSON
tensor data with C-level builtins rather than per-element Python code or numpy.

Errors are :class:`KServeError`: status 400 for malformed bodies (``invalid_json`` /
``invalid_request``), 422 (``invalid_input``) for well-formed requests that do not match
the model's metadata, 502 (``invalid_response``) for undecodable upstream responses.

This module has no Django imports.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "DATATYPES",
    "DATATYPE_NUMPY",
    "DATATYPE_SIZE",
    "HEADER_LENGTH_HEADER",
    "MAX_DIMS",
    "KServeError",
    "ParsedRequest",
    "RequestTensor",
    "TensorSpec",
    "bytes_tensor_decode",
    "bytes_tensor_encode",
    "count_units",
    "datatype_of",
    "header_length_parse",
    "request_build",
    "request_parse",
    "request_validate",
    "response_parse",
]

#: HTTP header carrying the JSON header's byte length when binary tensor data follows it.
HEADER_LENGTH_HEADER: Final = "Inference-Header-Content-Length"

#: Largest tensor rank accepted in a request.
MAX_DIMS: Final = 8

#: Element size in bytes of every supported v2 datatype; 0 for ``BYTES`` (variable).
DATATYPE_SIZE: Final[dict[str, int]] = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
    "BYTES": 0,
}

#: The supported v2 datatype names. ``BF16`` is deliberately absent (numpy has no
#: native bfloat16 and Triton refuses it in JSON).
DATATYPES: Final[frozenset[str]] = frozenset(DATATYPE_SIZE)

#: numpy dtype of every supported datatype (explicitly little-endian, as on the wire).
DATATYPE_NUMPY: Final[dict[str, np.dtype[Any]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}

# Inclusive value ranges of the integer datatypes (checked on JSON data).
_INT_RANGE: Final[dict[str, tuple[int, int]]] = {
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
    "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
}

# Largest finite magnitude of the float datatypes (checked on JSON data).
_FLOAT_MAX: Final[dict[str, float]] = {
    "FP16": 65504.0,
    "FP32": float(np.finfo(np.float32).max),
    "FP64": float(np.finfo(np.float64).max),
}

_KIND_TO_DATATYPE: Final[dict[tuple[str, int], str]] = {
    ("b", 1): "BOOL",
    ("u", 1): "UINT8",
    ("u", 2): "UINT16",
    ("u", 4): "UINT32",
    ("u", 8): "UINT64",
    ("i", 1): "INT8",
    ("i", 2): "INT16",
    ("i", 4): "INT32",
    ("i", 8): "INT64",
    ("f", 2): "FP16",
    ("f", 4): "FP32",
    ("f", 8): "FP64",
}

_U32: Final = struct.Struct("<I")
_BOOL_TYPES: Final = frozenset({bool})
_INT_TYPES: Final = frozenset({int})
_NUMBER_TYPES: Final = frozenset({int, float})
_STR_TYPES: Final = frozenset({str})
_SHARED_MEMORY_PREFIX: Final = "shared_memory"


class KServeError(Exception):
    """A request or response that cannot be accepted.

    Attributes:
        field: Where the problem is: a JSON path such as ``"inputs[0].shape"`` for
            framing errors, ``"inputs.<name>"`` for errors against the model metadata,
            ``"body"`` / ``"Inference-Header-Content-Length"`` for the envelope.
        message: Human-readable description (safe to return to the API caller).
        code: Machine-readable code: ``invalid_json``, ``invalid_request``,
            ``invalid_input`` or ``invalid_response``.
        status: The HTTP status to answer with (400, 422, or 502 for upstream replies).
    """

    field: str
    message: str
    code: str
    status: int

    def __init__(
        self, field: str, message: str, *, code: str = "invalid_request", status: int = 400
    ) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.code = code
        self.status = status

    def as_dict(self) -> dict[str, str]:
        """Error body: ``error`` (the v2 protocol's error key) plus ``code`` and ``field``."""
        return {"error": self.message, "code": self.code, "field": self.field}


def _bad(field: str, message: str) -> KServeError:
    return KServeError(field, message, code="invalid_request", status=400)


def _bad_json(field: str, message: str) -> KServeError:
    return KServeError(field, message, code="invalid_json", status=400)


def _invalid(name: str, message: str) -> KServeError:
    return KServeError(f"inputs.{name}", f"{name}: {message}", code="invalid_input", status=422)


def _bad_response(field: str, message: str) -> KServeError:
    return KServeError(field, message, code="invalid_response", status=502)


@dataclass(slots=True)
class TensorSpec:
    """One input (or output) of a model, as reported by the model metadata.

    ``-1`` in ``shape`` is a variable dimension. When the model's ``max_batch_size`` is
    greater than 0 the first dimension is the batch dimension (Triton's metadata already
    reports it, as ``-1``). ``optional`` inputs may be omitted from a request.
    """

    name: str
    datatype: str
    shape: list[int]
    optional: bool = False


@dataclass(slots=True)
class RequestTensor:
    """One input tensor of a parsed request.

    Exactly one of ``data`` (the JSON ``data`` array, possibly nested) and ``binary``
    (a zero-copy view of the tensor's bytes in the request body) is set.
    """

    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None
    binary: memoryview | None
    parameters: dict[str, Any]

    def element_count(self) -> int:
        """The number of elements, ``product(shape)``."""
        return math.prod(self.shape)

    def as_numpy(self) -> npt.NDArray[Any]:
        """Decode the tensor to a numpy array of its shape (``BYTES``: objects of ``bytes``).

        Binary fixed-size tensors are read-only views of the request body. Call it after
        :func:`request_validate`, which guarantees the sizes add up.
        """
        count = math.prod(self.shape)
        if self.datatype == "BYTES":
            if self.binary is not None:
                values = bytes_tensor_decode(self.binary, count)
            else:
                values = [v.encode("utf-8") for v in _flatten(self.data or [], len(self.shape))[0]]
            array = np.empty(len(values), dtype=np.object_)
            array[:] = values
            return array.reshape(self.shape)
        dtype = DATATYPE_NUMPY[self.datatype]
        if self.binary is not None:
            return np.frombuffer(self.binary, dtype=dtype).reshape(self.shape)
        flat = _flatten(self.data or [], len(self.shape))[0]
        return np.array(flat, dtype=dtype).reshape(self.shape)


@dataclass(slots=True)
class ParsedRequest:
    """A framing-valid inference request.

    Attributes:
        header: The decoded JSON header object.
        inputs: The input tensors, in request order.
        binary_offset: Where the binary section starts in the body (the JSON header's
            length; equals ``body_length`` when there is no binary data).
        body_length: Total body length in bytes.
    """

    header: dict[str, Any]
    inputs: list[RequestTensor]
    binary_offset: int
    body_length: int

    def batch_size(self, max_batch_size: int) -> int:
        """The request's batch size: the inputs' first dimension when the model batches."""
        if max_batch_size > 0 and self.inputs and self.inputs[0].shape:
            return self.inputs[0].shape[0]
        return 1

    def element_count(self, name: str) -> int:
        """The number of elements of input ``name``; ``KeyError`` if there is none."""
        for tensor in self.inputs:
            if tensor.name == name:
                return math.prod(tensor.shape)
        raise KeyError(name)

    def input(self, name: str) -> RequestTensor | None:
        """The input called ``name``, if any."""
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        return None


# --------------------------------------------------------------------------- JSON


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _pairs_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # With a duplicated key we would validate the last value while a parser that keeps
    # the first one (rapidjson member lookup, as in Triton) runs another: refuse them.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return obj


_REQUEST_DECODER: Final = json.JSONDecoder(
    parse_constant=_reject_constant, object_pairs_hook=_pairs_no_duplicates
)
# Responses are trusted upstream output: NaN/Infinity literals (non-finite outputs) are
# accepted there.
_RESPONSE_DECODER: Final = json.JSONDecoder()


def _header_split(
    body: bytes | bytearray | memoryview,
    header_length: int | None,
    error: Callable[[str, str], KServeError],
) -> tuple[memoryview, int]:
    """A flat byte view of ``body`` and the JSON header's length, range-checked."""
    view = memoryview(body)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    if header_length is None:
        return view, len(view)
    if type(header_length) is not int or not 0 < header_length <= len(view):
        raise error(
            HEADER_LENGTH_HEADER,
            f"{HEADER_LENGTH_HEADER} must be between 1 and the body length ({len(view)}), "
            f"got {header_length!r}",
        )
    return view, header_length


def header_length_parse(value: str | None) -> int | None:
    """Parse an ``Inference-Header-Content-Length`` HTTP header value (``None`` if absent).

    Only plain decimal digits are accepted; anything else is a 400 ``KServeError``.
    """
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise _bad(HEADER_LENGTH_HEADER, f"{HEADER_LENGTH_HEADER} must be an integer")
    return int(text)


# --------------------------------------------------------------------------- requests


def request_parse(body: bytes | bytearray | memoryview, header_length: int | None) -> ParsedRequest:
    """Parse and frame-check an inference request body.

    Args:
        body: The raw HTTP body (not copied: binary inputs are views into it).
        header_length: The ``Inference-Header-Content-Length`` header as an int, or
            ``None`` when absent (then the whole body is the JSON header).

    Raises:
        KServeError: status 400; ``field`` names the offending member.
    """
    view, hlen = _header_split(body, header_length, _bad)
    total = len(view)
    try:
        text = str(view[:hlen], "utf-8")
    except UnicodeDecodeError as exc:
        raise _bad_json("body", f"the JSON header is not valid UTF-8: {exc.reason}") from None
    try:
        header = _REQUEST_DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise _bad_json("body", f"invalid JSON: {exc.msg} at offset {exc.pos}") from None
    except (ValueError, RecursionError) as exc:
        raise _bad_json("body", f"invalid JSON: {exc}") from None
    if type(header) is not dict:
        raise _bad("body", "the request must be a JSON object")

    request_id = header.get("id")
    if request_id is not None and type(request_id) is not str:
        raise _bad("id", "id must be a string")
    parameters = header.get("parameters")
    if parameters is not None and type(parameters) is not dict:
        raise _bad("parameters", "parameters must be an object")

    raw_inputs = header.get("inputs")
    if type(raw_inputs) is not list or not raw_inputs:
        raise _bad("inputs", "inputs must be a non-empty list")

    inputs: list[RequestTensor] = []
    names: set[str] = set()
    cursor = hlen
    for index, raw in enumerate(raw_inputs):
        where = f"inputs[{index}]"
        if type(raw) is not dict:
            raise _bad(where, "each input must be an object")
        name = raw.get("name")
        if type(name) is not str or not name:
            raise _bad(f"{where}.name", "name must be a non-empty string")
        if name in names:
            raise _bad(f"{where}.name", f"duplicate input name {name!r}")
        names.add(name)
        datatype = raw.get("datatype")
        if type(datatype) is not str:
            raise _bad(f"{where}.datatype", "datatype must be a string")
        if datatype not in DATATYPE_SIZE:
            raise _bad(f"{where}.datatype", f"unsupported datatype {datatype!r}")
        shape = raw.get("shape")
        if (
            type(shape) is not list
            or len(shape) > MAX_DIMS
            or not all(type(d) is int and d >= 0 for d in shape)
        ):
            raise _bad(
                f"{where}.shape",
                f"shape must be a list of at most {MAX_DIMS} non-negative integers",
            )
        params = raw.get("parameters")
        if params is None:
            params = {}
        elif type(params) is not dict:
            raise _bad(f"{where}.parameters", "parameters must be an object")
        size = None
        if params:
            if any(key.startswith(_SHARED_MEMORY_PREFIX) for key in params):
                raise _bad(f"{where}.parameters", "shared memory inputs are not supported")
            size = params.get("binary_data_size")
        data = raw.get("data")
        binary: memoryview | None = None
        if size is not None:
            if data is not None:
                raise _bad(where, "give either data or parameters.binary_data_size, not both")
            if type(size) is not int or size < 0:
                raise _bad(
                    f"{where}.parameters.binary_data_size",
                    "binary_data_size must be a non-negative integer",
                )
            end = cursor + size
            if end > total:
                raise _bad(
                    f"{where}.parameters.binary_data_size",
                    f"binary_data_size {size} runs past the end of the body",
                )
            binary = view[cursor:end]
            cursor = end
        elif data is None:
            raise _bad(f"{where}.data", "data or parameters.binary_data_size is required")
        elif type(data) is not list:
            raise _bad(f"{where}.data", "data must be a list")
        elif datatype == "FP16":
            raise _bad(f"{where}.data", "FP16 data must be sent as binary data")
        inputs.append(RequestTensor(name, datatype, shape, data, binary, params))

    if cursor != total:
        raise _bad(
            "body",
            f"binary data sizes add up to {cursor - hlen} bytes "
            f"but the body has {total - hlen} bytes after the JSON header",
        )

    outputs = header.get("outputs")
    if outputs is not None:
        _outputs_check(outputs)
    return ParsedRequest(header, inputs, hlen, total)


def _outputs_check(outputs: Any) -> None:
    if type(outputs) is not list:
        raise _bad("outputs", "outputs must be a list")
    seen: set[str] = set()
    for index, raw in enumerate(outputs):
        where = f"outputs[{index}]"
        if type(raw) is not dict:
            raise _bad(where, "each output must be an object")
        name = raw.get("name")
        if type(name) is not str or not name:
            raise _bad(f"{where}.name", "name must be a non-empty string")
        if name in seen:
            raise _bad(f"{where}.name", f"duplicate output name {name!r}")
        seen.add(name)
        params = raw.get("parameters")
        if params is not None:
            if type(params) is not dict:
                raise _bad(f"{where}.parameters", "parameters must be an object")
            if any(key.startswith(_SHARED_MEMORY_PREFIX) for key in params):
                raise _bad(f"{where}.parameters", "shared memory outputs are not supported")


def _flatten(data: list[Any], max_depth: int) -> tuple[list[Any], set[type]]:
    """Flatten nested JSON ``data`` level by level; also return the leaf types.

    Raises ``ValueError`` when the nesting is ragged in depth or deeper than
    ``max_depth`` (the tensor's rank, at least 1).
    """
    flat = data
    depth = 1
    while True:
        types = set(map(type, flat))
        if list not in types:
            return flat, types
        if len(types) != 1:
            raise ValueError("data mixes lists and values at the same nesting level")
        depth += 1
        if depth > max_depth:
            raise ValueError(f"data is nested deeper than the tensor's rank ({max_depth})")
        flat = list(chain.from_iterable(flat))


def _json_check(tensor: RequestTensor, count: int) -> None:
    name, datatype = tensor.name, tensor.datatype
    try:
        flat, types = _flatten(tensor.data or [], max(len(tensor.shape), 1))
    except ValueError as exc:
        raise _invalid(name, str(exc)) from None
    if len(flat) != count:
        raise _invalid(
            name, f"data has {len(flat)} elements but shape {tensor.shape} needs {count}"
        )
    if not flat:
        return
    if datatype == "BYTES":
        if not types <= _STR_TYPES:
            raise _invalid(name, f"BYTES data must be strings, got {_type_names(types)}")
    elif datatype == "BOOL":
        if not types <= _BOOL_TYPES:
            raise _invalid(name, f"BOOL data must be true/false, got {_type_names(types)}")
    elif datatype in _INT_RANGE:
        if not types <= _INT_TYPES:
            raise _invalid(name, f"{datatype} data must be integers, got {_type_names(types)}")
        low, high = _INT_RANGE[datatype]
        if min(flat) < low or max(flat) > high:
            raise _invalid(name, f"{datatype} data out of range [{low}, {high}]")
    else:
        if not types <= _NUMBER_TYPES:
            raise _invalid(name, f"{datatype} data must be numbers, got {_type_names(types)}")
        limit = _FLOAT_MAX[datatype]
        # NaN/Infinity literals are refused by the parser; overflowing literals such as
        # 1e999 decode to inf and are caught here.
        if min(flat) < -limit or max(flat) > limit:
            raise _invalid(name, f"{datatype} data out of range")


def _type_names(types: set[type]) -> str:
    json_names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    return ", ".join(
        sorted(json_names.get(t, "null" if t is type(None) else "object") for t in types)
    )


def _bytes_elements_check(buf: memoryview, count: int) -> str | None:
    """Walk a length-prefixed BYTES buffer; return an error message or ``None``."""
    size = len(buf)
    if count * 4 > size:
        return f"binary data of {size} bytes cannot hold {count} BYTES elements"
    unpack = _U32.unpack_from
    offset = 0
    for element in range(count):
        if offset + 4 > size:
            return f"BYTES element {element} is truncated"
        offset += 4 + unpack(buf, offset)[0]
        if offset > size:
            return f"BYTES element {element} runs past the end of its binary data"
    if offset != size:
        return f"{size - offset} bytes left over after {count} BYTES elements"
    return None


def request_validate(
    parsed: ParsedRequest,
    inputs: list[TensorSpec],
    max_batch_size: int,
    *,
    max_elements: int,
) -> int:
    """Check a parsed request against the model's input metadata; return the batch size.

    Args:
        parsed: The output of :func:`request_parse`.
        inputs: The model's inputs from its metadata (batch dimension included).
        max_batch_size: The model's ``max_batch_size``; 0 when it does not batch.
        max_elements: Upper bound on the element count of each input tensor.

    Returns:
        The batch size (the common first dimension when batching, else 1).

    Raises:
        KServeError: status 422, ``field="inputs.<name>"``.
    """
    specs = {spec.name: spec for spec in inputs}
    batching = max_batch_size > 0
    batch = 0
    for tensor in parsed.inputs:
        name = tensor.name
        spec = specs.get(name)
        if spec is None:
            raise _invalid(name, f"unknown input; the model expects {sorted(specs)}")
        if tensor.datatype != spec.datatype:
            raise _invalid(name, f"expected datatype {spec.datatype}, got {tensor.datatype}")
        shape = tensor.shape
        want = spec.shape
        if len(shape) != len(want):
            raise _invalid(name, f"expected shape {want} (rank {len(want)}), got {shape}")
        for axis, (dim, expected) in enumerate(zip(shape, want, strict=True)):
            if batching and axis == 0:
                if not 1 <= dim <= max_batch_size:
                    raise _invalid(
                        name, f"batch size {dim} is outside 1..{max_batch_size} (shape {shape})"
                    )
                if batch and dim != batch:
                    raise _invalid(name, f"batch size {dim} differs from the other inputs' {batch}")
                batch = dim
            elif expected != -1 and dim != expected:
                raise _invalid(name, f"expected shape {want}, got {shape}")
        count = math.prod(shape)
        if count > max_elements:
            raise _invalid(name, f"{count} elements exceed the limit of {max_elements}")
        binary = tensor.binary
        if binary is None:
            _json_check(tensor, count)
        elif tensor.datatype == "BYTES":
            problem = _bytes_elements_check(binary, count)
            if problem is not None:
                raise _invalid(name, problem)
        else:
            need = count * DATATYPE_SIZE[tensor.datatype]
            if len(binary) != need:
                raise _invalid(
                    name,
                    f"binary data has {len(binary)} bytes but {tensor.datatype} shape "
                    f"{shape} needs {need}",
                )
            if tensor.datatype == "BOOL" and bytes(binary).translate(None, b"\x00\x01"):
                raise _invalid(name, "BOOL binary data must be 0 or 1 bytes")
    if len(parsed.inputs) < len(specs):  # every parsed input matched a distinct spec
        present = {tensor.name for tensor in parsed.inputs}
        for spec in inputs:
            if spec.name not in present and not spec.optional:
                raise _invalid(spec.name, "missing required input")
    return batch if batching else 1


def count_units(parsed: ParsedRequest) -> int:
    """Total number of input elements across all inputs (the billing unit)."""
    return sum(math.prod(tensor.shape) for tensor in parsed.inputs)


# --------------------------------------------------------------------------- BYTES


def bytes_tensor_encode(values: Iterable[bytes]) -> bytes:
    """Serialize BYTES elements: each as a 4-byte little-endian length then the bytes."""
    pack = _U32.pack
    return b"".join(chain.from_iterable((pack(len(v)), v) for v in values))


def bytes_tensor_decode(
    buf: bytes | bytearray | memoryview, count: int | None = None
) -> list[bytes]:
    """Deserialize length-prefixed BYTES elements.

    Args:
        buf: The serialized elements.
        count: The exact number of elements expected, or ``None`` to read to the end.

    Raises:
        ValueError: truncated data, a count mismatch, or bytes left over.
    """
    view = memoryview(buf)
    size = len(view)
    if count is not None and count * 4 > size:
        raise ValueError(f"{size} bytes cannot hold {count} BYTES elements")
    unpack = _U32.unpack_from
    out: list[bytes] = []
    offset = 0
    limit = size if count is None else count
    while (offset if count is None else len(out)) < limit:
        if offset + 4 > size:
            raise ValueError(f"BYTES element {len(out)} is truncated")
        start = offset + 4
        offset = start + unpack(view, offset)[0]
        if offset > size:
            raise ValueError(f"BYTES element {len(out)} runs past the end of the data")
        out.append(view[start:offset].tobytes())
    if offset != size:
        raise ValueError(f"{size - offset} bytes left over after {len(out)} BYTES elements")
    return out


# --------------------------------------------------------------------------- building


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The v2 datatype name for a numpy dtype (object, ``S`` and ``U`` arrays are BYTES)."""
    if dtype.kind in "OSU":
        return "BYTES"
    name = _KIND_TO_DATATYPE.get((dtype.kind, dtype.itemsize))
    if name is None:
        raise ValueError(f"numpy dtype {dtype} has no KServe v2 datatype")
    return name


def _bytes_elements(array: npt.NDArray[Any]) -> list[bytes]:
    out: list[bytes] = []
    for value in array.ravel().tolist():
        if isinstance(value, bytes):
            out.append(value)
        elif isinstance(value, str):
            out.append(value.encode("utf-8"))
        else:
            raise ValueError(f"BYTES elements must be bytes or str, got {type(value).__name__}")
    return out


def request_build(
    inputs: Sequence[tuple[str, npt.NDArray[Any]]],
    outputs: Sequence[str],
    *,
    binary: bool = True,
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """Build an inference request body.

    Args:
        inputs: ``(name, array)`` pairs; the datatype follows the array's dtype (object,
            ``S`` and ``U`` arrays become BYTES; ``str`` elements are UTF-8 encoded).
        outputs: Output names to request (all outputs when empty).
        binary: Send inputs as binary data and ask for binary outputs; otherwise
            everything travels as JSON.
        parameters: Optional request-level ``parameters``.

    Returns:
        The body and the value for ``Inference-Header-Content-Length`` (``None`` when
        the body is pure JSON).

    Raises:
        ValueError: unsupported dtype, non-UTF-8 BYTES in JSON mode, or non-finite
            floats in JSON mode.
    """
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes | memoryview] = []
    for name, array in inputs:
        datatype = datatype_of(array.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw: bytes | memoryview
            if datatype == "BYTES":
                raw = bytes_tensor_encode(_bytes_elements(array))
            else:
                contiguous = np.ascontiguousarray(array, dtype=DATATYPE_NUMPY[datatype])
                raw = contiguous.reshape(-1).view(np.uint8).data
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [v.decode("utf-8") for v in _bytes_elements(array)]
        else:
            entry["data"] = array.ravel().tolist()
        tensors.append(entry)
    header: dict[str, Any] = {"inputs": tensors}
    request_parameters = dict(parameters or {})
    if outputs:
        header["outputs"] = [{"name": n, "parameters": {"binary_data": binary}} for n in outputs]
    elif binary:
        request_parameters["binary_data_output"] = True
    if request_parameters:
        header["parameters"] = request_parameters
    encoded = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if not chunks:
        return encoded, None
    return b"".join([encoded, *chunks]), len(encoded)


# --------------------------------------------------------------------------- responses


def response_parse(
    body: bytes | bytearray | memoryview, header_length: int | None
) -> dict[str, npt.NDArray[Any]]:
    """Decode the outputs of a Triton inference response into numpy arrays.

    Binary outputs of fixed-size types are read-only views of ``body``; ``BYTES``
    outputs are object arrays of ``bytes`` (JSON strings are UTF-8 encoded).

    Raises:
        KServeError: status 502 (``invalid_response``) when the response is malformed
            or is a v2 error object.
    """
    view, hlen = _header_split(body, header_length, _bad_response)
    try:
        header = _RESPONSE_DECODER.decode(str(view[:hlen], "utf-8"))
    except (ValueError, RecursionError) as exc:
        raise _bad_response("body", f"invalid JSON in the response: {exc}") from None
    if type(header) is not dict:
        raise _bad_response("body", "the response is not a JSON object")
    outputs = header.get("outputs")
    if type(outputs) is not list:
        if "error" in header:
            raise _bad_response("error", str(header["error"]))
        raise _bad_response("outputs", "the response has no outputs list")
    result: dict[str, npt.NDArray[Any]] = {}
    cursor = hlen
    total = len(view)
    for index, output in enumerate(outputs):
        where = f"outputs[{index}]"
        try:
            name = output["name"]
            datatype = output["datatype"]
            shape = [int(d) for d in output["shape"]]
            params = output.get("parameters") or {}
            size = params.get("binary_data_size")
        except (KeyError, TypeError, AttributeError, ValueError):
            raise _bad_response(where, "malformed output object") from None
        if datatype not in DATATYPE_SIZE:
            raise _bad_response(f"{where}.datatype", f"unsupported datatype {datatype!r}")
        count = math.prod(shape)
        try:
            if size is not None:
                end = cursor + int(size)
                if end > total:
                    raise ValueError("binary_data_size runs past the end of the body")
                chunk = view[cursor:end]
                cursor = end
                result[name] = _binary_to_numpy(chunk, datatype, shape, count)
            else:
                result[name] = _json_to_numpy(output.get("data"), datatype, shape, count)
        except (ValueError, TypeError, OverflowError) as exc:
            raise _bad_response(where, f"{name}: {exc}") from None
    if cursor != total:
        raise _bad_response("body", f"{total - cursor} unexpected bytes after the outputs")
    return result


def _binary_to_numpy(
    chunk: memoryview, datatype: str, shape: list[int], count: int
) -> npt.NDArray[Any]:
    if datatype == "BYTES":
        values = bytes_tensor_decode(chunk, count)
        array = np.empty(count, dtype=np.object_)
        array[:] = values
        return array.reshape(shape)
    need = count * DATATYPE_SIZE[datatype]
    if len(chunk) != need:
        raise ValueError(f"binary data has {len(chunk)} bytes, shape {shape} needs {need}")
    return np.frombuffer(chunk, dtype=DATATYPE_NUMPY[datatype]).reshape(shape)


def _json_to_numpy(data: Any, datatype: str, shape: list[int], count: int) -> npt.NDArray[Any]:
    if type(data) is not list:
        raise ValueError("data must be a list")
    flat = _flatten(data, max(len(shape), 1))[0]
    if len(flat) != count:
        raise ValueError(f"data has {len(flat)} elements, shape {shape} needs {count}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        if not set(map(type, flat)) <= _STR_TYPES:
            raise ValueError("BYTES data must be strings")
        array[:] = [v.encode("utf-8") for v in flat]
        return array.reshape(shape)
    return np.array(flat, dtype=DATATYPE_NUMPY[datatype]).reshape(shape)
