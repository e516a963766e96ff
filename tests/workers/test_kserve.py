"""Tests of the KServe v2 / Triton binary-data codec (no database)."""

from __future__ import annotations

import json
import struct
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.kserve import (
    DATATYPE_NUMPY,
    DATATYPE_SIZE,
    DATATYPES,
    KServeError,
    ParsedRequest,
    TensorSpec,
    bytes_tensor_decode,
    bytes_tensor_encode,
    count_units,
    datatype_of,
    header_length_parse,
    request_build,
    request_parse,
    request_validate,
    response_parse,
)

MAX = 1_000_000


def _body(header: dict[str, Any], *chunks: bytes) -> tuple[bytes, int | None]:
    """A request body: the JSON header then the binary chunks (header length if any)."""
    encoded = json.dumps(header).encode()
    if not chunks:
        return encoded, None
    return encoded + b"".join(chunks), len(encoded)


def _one(datatype: str, shape: list[int], **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "INPUT0", "datatype": datatype, "shape": shape, **extra}]}


def _parse_error(body: bytes, header_length: int | None = None) -> KServeError:
    with pytest.raises(KServeError) as info:
        request_parse(body, header_length)
    return info.value


def _validate_error(
    header: dict[str, Any],
    specs: list[TensorSpec],
    max_batch_size: int = 8,
    *chunks: bytes,
    max_elements: int = MAX,
) -> KServeError:
    body, length = _body(header, *chunks)
    parsed = request_parse(body, length)
    with pytest.raises(KServeError) as info:
        request_validate(parsed, specs, max_batch_size, max_elements=max_elements)
    assert info.value.status == 422
    assert info.value.code == "invalid_input"
    return info.value


def _parse_validate(
    body: bytes | bytearray | memoryview,
    length: int | None,
    specs: list[TensorSpec],
    max_batch_size: int,
) -> tuple[ParsedRequest, int]:
    parsed = request_parse(body, length)
    return parsed, request_validate(parsed, specs, max_batch_size, max_elements=MAX)


FP32_SPEC = [TensorSpec("INPUT0", "FP32", [-1, 4])]


# --------------------------------------------------------------------------- tables


def test_datatype_tables_agree() -> None:
    assert set(DATATYPE_NUMPY) == DATATYPES == set(DATATYPE_SIZE)
    assert "BF16" not in DATATYPES
    for name, size in DATATYPE_SIZE.items():
        if name != "BYTES":
            assert DATATYPE_NUMPY[name].itemsize == size
            assert datatype_of(DATATYPE_NUMPY[name]) == name
    assert datatype_of(np.dtype(object)) == "BYTES"
    assert datatype_of(np.dtype("S3")) == "BYTES"
    with pytest.raises(ValueError, match="no KServe v2 datatype"):
        datatype_of(np.dtype(np.complex64))


def test_error_as_dict() -> None:
    error = _parse_error(b"[]")
    assert error.as_dict() == {
        "error": "the request must be a JSON object",
        "code": "invalid_request",
        "field": "body",
    }
    assert str(error) == "body: the request must be a JSON object"


# --------------------------------------------------------------------------- round trips

ROUND_TRIP_ARRAYS = [
    np.array([[True, False, True]]),
    np.array([[0, 255]], dtype=np.uint8),
    np.array([[0, 2**64 - 1]], dtype=np.uint64),
    np.array([[-128, 127]], dtype=np.int8),
    np.array([[-(2**63), 2**63 - 1]], dtype=np.int64),
    np.array([[0.5, -1.25]], dtype=np.float16),
    np.array([[0.1, -3.4e38, 1e-30]], dtype=np.float32),
    np.array([[0.1, 1e308]], dtype=np.float64),
    np.array([[b"", b"a\x00b", "é".encode()]], dtype=object),
]


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("array", ROUND_TRIP_ARRAYS, ids=lambda a: str(a.dtype))
def test_build_parse_round_trip(array: np.ndarray, binary: bool) -> None:
    datatype = datatype_of(array.dtype)
    if datatype == "FP16" and not binary:
        with pytest.raises(KServeError) as info:
            request_parse(*request_build([("X", array)], ["Y"], binary=False))
        assert info.value.field == "inputs[0].data"
        return
    body, length = request_build([("X", array)], ["Y"], binary=binary)
    assert (length is not None) == binary
    specs = [TensorSpec("X", datatype, [-1, array.shape[1]])]
    parsed, batch = _parse_validate(body, length, specs, 4)
    assert batch == 1
    decoded = parsed.inputs[0].as_numpy()
    assert decoded.shape == array.shape
    assert decoded.dtype == DATATYPE_NUMPY[datatype]
    assert decoded.tolist() == array.tolist()
    assert parsed.header["outputs"] == [{"name": "Y", "parameters": {"binary_data": binary}}]


def test_build_without_outputs_requests_binary_output() -> None:
    body, length = request_build([("X", np.zeros((1, 2), np.float32))], [])
    assert length is not None
    assert json.loads(body[:length])["parameters"] == {"binary_data_output": True}
    body, length = request_build([("X", np.zeros((1, 2), np.float32))], [], binary=False)
    assert length is None
    assert "parameters" not in json.loads(body)


def test_build_str_bytes_and_errors() -> None:
    text = np.array([["héllo"], ["wörld"]], dtype=object)
    for binary in (True, False):
        body, length = request_build([("text", text)], ["embedding"], binary=binary)
        parsed, batch = _parse_validate(body, length, [TensorSpec("text", "BYTES", [-1, 1])], 8)
        assert batch == 2
        assert parsed.inputs[0].as_numpy().tolist() == [["héllo".encode()], ["wörld".encode()]]
    unicode_array = np.array([["a"], ["bc"]])  # numpy "U" dtype
    body, length = request_build([("text", unicode_array)], [])
    assert request_parse(body, length).inputs[0].as_numpy().tolist() == [[b"a"], [b"bc"]]
    with pytest.raises(UnicodeDecodeError):
        request_build([("t", np.array([b"\xff"], dtype=object))], [], binary=False)
    with pytest.raises(ValueError, match="bytes or str"):
        request_build([("t", np.array([1], dtype=object))], [])
    with pytest.raises(ValueError, match="Out of range float"):
        request_build([("t", np.array([np.nan], dtype=np.float32))], [], binary=False)


def test_build_non_contiguous_and_big_endian() -> None:
    base = np.arange(12, dtype=">i4").reshape(3, 4)
    view = base[:, ::2]  # non-contiguous, big-endian
    body, length = request_build([("X", view)], ["Y"])
    parsed, _ = _parse_validate(body, length, [TensorSpec("X", "INT32", [-1, 2])], 8)
    assert parsed.inputs[0].as_numpy().tolist() == view.tolist()


def test_nested_and_flat_json_are_equivalent() -> None:
    spec = [TensorSpec("INPUT0", "INT32", [-1, 2, 3])]
    values = list(range(12))
    nested = [[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]]
    arrays = []
    for data in (values, nested):
        parsed, batch = _parse_validate(*_body(_one("INT32", [2, 2, 3], data=data)), spec, 4)
        assert batch == 2
        arrays.append(parsed.inputs[0].as_numpy())
    assert arrays[0].tolist() == arrays[1].tolist() == np.arange(12).reshape(2, 2, 3).tolist()


def test_mixed_binary_and_json_inputs() -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.array([[1], [2]], dtype=np.int64)
    c = bytes_tensor_encode([b"x", b"yz"])
    header = {
        "id": "req-1",
        "parameters": {"priority": 1},
        "inputs": [
            {
                "name": "A",
                "datatype": "FP32",
                "shape": [2, 4],
                "parameters": {"binary_data_size": 32},
            },
            {"name": "B", "datatype": "INT64", "shape": [2, 1], "data": [1, 2]},
            {
                "name": "C",
                "datatype": "BYTES",
                "shape": [2, 1],
                "parameters": {"binary_data_size": len(c)},
            },
        ],
    }
    body, length = _body(header, a.tobytes(), c)
    specs = [
        TensorSpec("A", "FP32", [-1, 4]),
        TensorSpec("B", "INT64", [-1, 1]),
        TensorSpec("C", "BYTES", [-1, 1]),
    ]
    parsed, batch = _parse_validate(body, length, specs, 8)
    assert batch == 2
    assert parsed.binary_offset == length
    assert parsed.body_length == len(body)
    assert parsed.inputs[0].as_numpy().tolist() == a.tolist()
    assert parsed.inputs[1].as_numpy().tolist() == b.tolist()
    assert parsed.inputs[2].as_numpy().tolist() == [[b"x"], [b"yz"]]
    assert count_units(parsed) == 8 + 2 + 2
    assert parsed.element_count("A") == 8
    assert parsed.batch_size(8) == 2
    assert parsed.batch_size(0) == 1
    with pytest.raises(KeyError):
        parsed.element_count("nope")
    found = parsed.input("B")
    assert found is not None
    assert found.element_count() == 2
    assert parsed.input("nope") is None


def test_header_length_equal_to_body_and_empty_binary() -> None:
    body, _ = _body(_one("FP32", [1, 4], data=[1, 2, 3, 4]))
    parsed = request_parse(body, len(body))
    assert parsed.binary_offset == parsed.body_length == len(body)
    empty = _one("FP32", [0], parameters={"binary_data_size": 0})
    body, _ = _body(empty)
    parsed, batch = _parse_validate(body, None, [TensorSpec("INPUT0", "FP32", [-1])], 0)
    assert batch == 1
    assert parsed.inputs[0].as_numpy().shape == (0,)


def test_scalar_and_non_batching_model() -> None:
    parsed, batch = _parse_validate(
        *_body(_one("FP64", [], data=[2.5])), [TensorSpec("INPUT0", "FP64", [])], 0
    )
    assert batch == 1
    assert parsed.inputs[0].as_numpy().tolist() == 2.5
    # Without batching the first dimension is an ordinary (here variable) dimension.
    spec = [TensorSpec("INPUT0", "FP32", [-1, 4])]
    _, batch = _parse_validate(*_body(_one("FP32", [100, 4], data=[0.0] * 400)), spec, 0)
    assert batch == 1


def test_optional_input_may_be_omitted() -> None:
    specs = [*FP32_SPEC, TensorSpec("MASK", "BOOL", [-1, 4], optional=True)]
    _, batch = _parse_validate(*_body(_one("FP32", [3, 4], data=[0] * 12)), specs, 8)
    assert batch == 3
    error = _validate_error(
        _one("FP32", [3, 4], data=[0] * 12), [*FP32_SPEC, TensorSpec("MASK", "BOOL", [-1, 4])]
    )
    assert error.field == "inputs.MASK"
    assert error.message == "MASK: missing required input"


def test_accepts_bytearray_and_memoryview_bodies() -> None:
    body, length = request_build([("INPUT0", np.ones((1, 4), np.float32))], ["OUT"])
    for wrapped in (bytearray(body), memoryview(body)):
        parsed, _ = _parse_validate(wrapped, length, FP32_SPEC, 8)
        assert parsed.inputs[0].as_numpy().tolist() == [[1.0] * 4]


# --------------------------------------------------------------------------- framing errors


def _err(
    header: Any, field: str, *chunks: bytes, code: str = "invalid_request"
) -> tuple[bytes, int | None, str, str]:
    if isinstance(header, bytes):
        return header, None, field, code
    body, length = _body(header, *chunks)
    return body, length, field, code


FP32_DATA = {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}

FRAMING_ERRORS = {
    "not json": _err(b"{", "body", code="invalid_json"),
    "empty body": _err(b"", "body", code="invalid_json"),
    "bad utf-8": _err(b'{"inputs": "\xff"}', "body", code="invalid_json"),
    "nan": _err(b'{"inputs": [{"data": [NaN]}]}', "body", code="invalid_json"),
    "infinity": _err(b'{"x": Infinity, "inputs": []}', "body", code="invalid_json"),
    "-infinity": _err(b'{"x": -Infinity}', "body", code="invalid_json"),
    "duplicate key": _err(b'{"inputs": [], "inputs": []}', "body", code="invalid_json"),
    "deep nesting": _err(
        b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "body", code="invalid_json"
    ),
    "huge int": _err(
        b'{"inputs": [{"data": [' + b"9" * 5000 + b"]}]}", "body", code="invalid_json"
    ),
    "trailing garbage": _err(b'{"inputs": []} x', "body", code="invalid_json"),
    "bom": _err(b'\xef\xbb\xbf{"inputs": []}', "body", code="invalid_json"),
    "not an object": _err([FP32_DATA], "body"),
    "id not str": _err({"id": 5, "inputs": [FP32_DATA]}, "id"),
    "parameters not object": _err({"parameters": [], "inputs": [FP32_DATA]}, "parameters"),
    "no inputs": _err({"outputs": []}, "inputs"),
    "empty inputs": _err({"inputs": []}, "inputs"),
    "inputs not list": _err({"inputs": {"name": "x"}}, "inputs"),
    "input not object": _err({"inputs": [FP32_DATA, "INPUT1"]}, "inputs[1]"),
    "no name": _err({"inputs": [{**FP32_DATA, "name": None}]}, "inputs[0].name"),
    "empty name": _err({"inputs": [{**FP32_DATA, "name": ""}]}, "inputs[0].name"),
    "name not str": _err({"inputs": [{**FP32_DATA, "name": 3}]}, "inputs[0].name"),
    "duplicate name": _err({"inputs": [FP32_DATA, FP32_DATA]}, "inputs[1].name"),
    "no datatype": _err({"inputs": [{**FP32_DATA, "datatype": None}]}, "inputs[0].datatype"),
    "unknown datatype": _err(
        {"inputs": [{**FP32_DATA, "datatype": "FLOAT"}]}, "inputs[0].datatype"
    ),
    "bf16": _err({"inputs": [{**FP32_DATA, "datatype": "BF16"}]}, "inputs[0].datatype"),
    "lowercase datatype": _err(
        {"inputs": [{**FP32_DATA, "datatype": "fp32"}]}, "inputs[0].datatype"
    ),
    "no shape": _err({"inputs": [{**FP32_DATA, "shape": None}]}, "inputs[0].shape"),
    "shape not list": _err({"inputs": [{**FP32_DATA, "shape": 4}]}, "inputs[0].shape"),
    "negative dim": _err({"inputs": [{**FP32_DATA, "shape": [-1, 4]}]}, "inputs[0].shape"),
    "float dim": _err({"inputs": [{**FP32_DATA, "shape": [1.0, 4]}]}, "inputs[0].shape"),
    "bool dim": _err({"inputs": [{**FP32_DATA, "shape": [True, 4]}]}, "inputs[0].shape"),
    "nine dims": _err({"inputs": [{**FP32_DATA, "shape": [1] * 9}]}, "inputs[0].shape"),
    "no data": _err(
        {"inputs": [{"name": "I", "datatype": "FP32", "shape": [1]}]}, "inputs[0].data"
    ),
    "data not list": _err({"inputs": [{**FP32_DATA, "data": "1,2,3,4"}]}, "inputs[0].data"),
    "fp16 json": _err({"inputs": [{**FP32_DATA, "datatype": "FP16"}]}, "inputs[0].data"),
    "parameters not object on input": _err(
        {"inputs": [{**FP32_DATA, "parameters": [1]}]}, "inputs[0].parameters"
    ),
    "data and binary": _err(
        {"inputs": [{**FP32_DATA, "parameters": {"binary_data_size": 16}}]},
        "inputs[0]",
        b"\x00" * 16,
    ),
    "negative binary size": _err(
        _one("FP32", [1], parameters={"binary_data_size": -4}),
        "inputs[0].parameters.binary_data_size",
        b"\x00" * 4,
    ),
    "string binary size": _err(
        _one("FP32", [1], parameters={"binary_data_size": "4"}),
        "inputs[0].parameters.binary_data_size",
        b"\x00" * 4,
    ),
    "bool binary size": _err(
        _one("BOOL", [1], parameters={"binary_data_size": True}),
        "inputs[0].parameters.binary_data_size",
        b"\x01",
    ),
    "binary past end": _err(
        _one("FP32", [1, 4], parameters={"binary_data_size": 16}),
        "inputs[0].parameters.binary_data_size",
        b"\x00" * 15,
    ),
    "trailing bytes": _err(
        _one("FP32", [1, 4], parameters={"binary_data_size": 16}), "body", b"\x00" * 17
    ),
    "binary without size": _err({"inputs": [FP32_DATA]}, "body", b"\x00" * 4),
    "shared memory input": _err(
        _one("FP32", [1], parameters={"shared_memory_region": "r", "shared_memory_byte_size": 4}),
        "inputs[0].parameters",
    ),
    "outputs not list": _err({"inputs": [FP32_DATA], "outputs": {}}, "outputs"),
    "output not object": _err({"inputs": [FP32_DATA], "outputs": ["OUT"]}, "outputs[0]"),
    "output without name": _err({"inputs": [FP32_DATA], "outputs": [{}]}, "outputs[0].name"),
    "duplicate output": _err(
        {"inputs": [FP32_DATA], "outputs": [{"name": "O"}, {"name": "O"}]}, "outputs[1].name"
    ),
    "output parameters not object": _err(
        {"inputs": [FP32_DATA], "outputs": [{"name": "O", "parameters": 1}]},
        "outputs[0].parameters",
    ),
    "shared memory output": _err(
        {
            "inputs": [FP32_DATA],
            "outputs": [{"name": "O", "parameters": {"shared_memory_region": "r"}}],
        },
        "outputs[0].parameters",
    ),
}


@pytest.mark.parametrize(
    ("body", "length", "field", "code"), FRAMING_ERRORS.values(), ids=FRAMING_ERRORS.keys()
)
def test_framing_errors_name_the_field(
    body: bytes, length: int | None, field: str, code: str
) -> None:
    error = _parse_error(body, length)
    assert (error.field, error.code, error.status) == (field, code, 400), error.message
    assert error.message


def test_binary_without_header_length() -> None:
    header = _one("FP32", [1], parameters={"binary_data_size": 4})
    body, _ = _body(header, b"\x00" * 4)
    error = _parse_error(body, None)  # the whole body is taken as JSON
    assert (error.field, error.code) == ("body", "invalid_json")
    error = _parse_error(_body(header)[0], None)
    assert error.field == "inputs[0].parameters.binary_data_size"


def test_overflowing_float_literal() -> None:
    body = b'{"inputs": [{"name": "INPUT0", "datatype": "FP64", "shape": [1], "data": [1e999]}]}'
    parsed = request_parse(body, None)
    with pytest.raises(KServeError) as info:
        request_validate(parsed, [TensorSpec("INPUT0", "FP64", [-1])], 0, max_elements=MAX)
    assert info.value.field == "inputs.INPUT0"
    assert "out of range" in info.value.message


@pytest.mark.parametrize("length", [0, -1, 10_000, True])
def test_bad_header_length(length: int) -> None:
    body, _ = _body({"inputs": [FP32_DATA]})
    error = _parse_error(body, length)
    assert error.field == "Inference-Header-Content-Length"
    assert error.status == 400


def test_header_length_cutting_json_is_invalid_json() -> None:
    body, length = _body(_one("FP32", [1, 4], parameters={"binary_data_size": 16}), b"\x00" * 16)
    assert length is not None
    error = _parse_error(body, length - 1)
    assert error.code == "invalid_json"


def test_header_length_parse() -> None:
    assert header_length_parse(None) is None
    assert header_length_parse("164") == 164
    assert header_length_parse(" 7 ") == 7
    for bad in ("", "-1", "1e3", "0x10", "١٢", "9" * 30):
        with pytest.raises(KServeError) as info:
            header_length_parse(bad)
        assert info.value.field == "Inference-Header-Content-Length"


# --------------------------------------------------------------------------- metadata errors


def test_wrong_datatype_message() -> None:
    error = _validate_error(_one("INT64", [1, 4], data=[1, 2, 3, 4]), FP32_SPEC)
    assert error.field == "inputs.INPUT0"
    assert error.message == "INPUT0: expected datatype FP32, got INT64"


VALIDATION_ERRORS: dict[str, tuple[dict[str, Any], list[TensorSpec], int, str]] = {
    "unknown input": (
        {"inputs": [FP32_DATA, {**FP32_DATA, "name": "EXTRA"}]},
        FP32_SPEC,
        8,
        "unknown input",
    ),
    "missing input": (
        {"inputs": [FP32_DATA]},
        [*FP32_SPEC, TensorSpec("INPUT1", "FP32", [-1, 4])],
        8,
        "missing required input",
    ),
    "rank": (_one("FP32", [4], data=[1, 2, 3, 4]), FP32_SPEC, 8, "rank"),
    "fixed dim": (_one("FP32", [1, 3], data=[1, 2, 3]), FP32_SPEC, 8, "expected shape"),
    "batch over max": (_one("FP32", [9, 4], data=[0] * 36), FP32_SPEC, 8, "outside 1..8"),
    "batch zero": (_one("FP32", [0, 4], data=[]), FP32_SPEC, 8, "outside 1..8"),
    "too many elements": (
        _one("FP32", [1, 4], data=[0] * 4),
        [TensorSpec("INPUT0", "FP32", [-1, -1])],
        0,
        "exceed",
    ),
    "count short": (_one("FP32", [1, 4], data=[1, 2, 3]), FP32_SPEC, 8, "3 elements"),
    "count long": (_one("FP32", [1, 4], data=[1, 2, 3, 4, 5]), FP32_SPEC, 8, "5 elements"),
    "nested count": (_one("FP32", [1, 4], data=[[1, 2], [3]]), FP32_SPEC, 8, "3 elements"),
    "ragged nesting": (_one("FP32", [1, 4], data=[[1, 2], 3, 4]), FP32_SPEC, 8, "mixes lists"),
    "too deep": (_one("FP32", [1, 4], data=[[[[1, 2, 3, 4]]]]), FP32_SPEC, 8, "deeper"),
    "string in fp32": (_one("FP32", [1, 4], data=[1, 2, 3, "4"]), FP32_SPEC, 8, "string"),
    "bool in fp32": (_one("FP32", [1, 4], data=[1, 2, 3, True]), FP32_SPEC, 8, "boolean"),
    "null in fp32": (_one("FP32", [1, 4], data=[1, 2, 3, None]), FP32_SPEC, 8, "null"),
    "object in fp32": (_one("FP32", [1, 4], data=[1, 2, 3, {}]), FP32_SPEC, 8, "object"),
    "overflow fp32": (_one("FP32", [1, 4], data=[1, 2, 3, 1e39]), FP32_SPEC, 8, "out of range"),
    "float in int": (
        _one("INT64", [1, 2], data=[1, 2.0]),
        [TensorSpec("INPUT0", "INT64", [-1, 2])],
        8,
        "integers",
    ),
    "bool in int": (
        _one("INT64", [1, 2], data=[1, False]),
        [TensorSpec("INPUT0", "INT64", [-1, 2])],
        8,
        "integers",
    ),
    "int8 range": (
        _one("INT8", [2], data=[127, 128]),
        [TensorSpec("INPUT0", "INT8", [-1])],
        0,
        "out of range",
    ),
    "uint8 negative": (
        _one("UINT8", [2], data=[0, -1]),
        [TensorSpec("INPUT0", "UINT8", [-1])],
        0,
        "out of range",
    ),
    "int64 range": (
        _one("INT64", [1], data=[2**63]),
        [TensorSpec("INPUT0", "INT64", [-1])],
        0,
        "out of range",
    ),
    "int in bool": (
        _one("BOOL", [2], data=[True, 1]),
        [TensorSpec("INPUT0", "BOOL", [-1])],
        0,
        "true/false",
    ),
    "bytes not string": (
        _one("BYTES", [2], data=["a", 1]),
        [TensorSpec("INPUT0", "BYTES", [-1])],
        0,
        "strings",
    ),
}


@pytest.mark.parametrize(
    ("header", "specs", "max_batch", "needle"),
    VALIDATION_ERRORS.values(),
    ids=VALIDATION_ERRORS.keys(),
)
def test_validation_errors_name_the_tensor(
    header: dict[str, Any], specs: list[TensorSpec], max_batch: int, needle: str
) -> None:
    limit = 3 if needle == "exceed" else MAX
    error = _validate_error(header, specs, max_batch, max_elements=limit)
    bad_name = (
        "INPUT1"
        if needle == "missing required input"
        else ("EXTRA" if needle == "unknown input" else "INPUT0")
    )
    assert error.field == f"inputs.{bad_name}"
    assert error.message.startswith(f"{bad_name}: ")
    assert needle in error.message


def test_inconsistent_batch_between_inputs() -> None:
    header = {"inputs": [FP32_DATA, {**FP32_DATA, "name": "INPUT1", "shape": [2, 2]}]}
    specs = [*FP32_SPEC, TensorSpec("INPUT1", "FP32", [-1, 2])]
    error = _validate_error(header, specs)
    assert error.field == "inputs.INPUT1"
    assert "differs" in error.message


def test_fp64_accepts_what_fp32_rejects() -> None:
    spec = [TensorSpec("INPUT0", "FP64", [-1])]
    _, batch = _parse_validate(*_body(_one("FP64", [3], data=[1e39, -1e300, 2**70])), spec, 4)
    assert batch == 3


BINARY_SPEC_I64 = [TensorSpec("INPUT0", "INT64", [-1, 2])]
BYTES_SPEC = [TensorSpec("INPUT0", "BYTES", [-1, 1])]


def _binary_one(datatype: str, shape: list[int], raw: bytes) -> tuple[dict[str, Any], bytes]:
    return _one(datatype, shape, parameters={"binary_data_size": len(raw)}), raw


BINARY_ERRORS: dict[str, tuple[tuple[dict[str, Any], bytes], list[TensorSpec], str]] = {
    "fp32 short": (_binary_one("FP32", [1, 4], b"\x00" * 15), FP32_SPEC, "15 bytes"),
    "fp32 long": (_binary_one("FP32", [1, 4], b"\x00" * 20), FP32_SPEC, "20 bytes"),
    "int64 as int32 bytes": (
        _binary_one("INT64", [1, 2], b"\x00" * 8),
        BINARY_SPEC_I64,
        "needs 16",
    ),
    "bool not 0/1": (
        _binary_one("BOOL", [2], b"\x01\x02"),
        [TensorSpec("INPUT0", "BOOL", [-1])],
        "0 or 1",
    ),
    "bytes too few elements": (
        _binary_one("BYTES", [2, 1], bytes_tensor_encode([b"abc"])),
        BYTES_SPEC,
        "cannot hold",
    ),
    "bytes leftover": (
        _binary_one("BYTES", [1, 1], bytes_tensor_encode([b"abc"]) + b"\x00"),
        BYTES_SPEC,
        "left over",
    ),
    "bytes extra element": (
        _binary_one("BYTES", [1, 1], bytes_tensor_encode([b"abc", b"d"])),
        BYTES_SPEC,
        "left over",
    ),
    "bytes element past end": (
        _binary_one("BYTES", [2, 1], struct.pack("<I", 1) + b"a" + struct.pack("<I", 9) + b"b"),
        BYTES_SPEC,
        "runs past",
    ),
    "bytes truncated prefix": (
        _binary_one("BYTES", [2, 1], struct.pack("<I", 3) + b"abc" + b"\x00\x00"),
        BYTES_SPEC,
        "truncated",
    ),
}


@pytest.mark.parametrize(
    ("header_raw", "specs", "needle"), BINARY_ERRORS.values(), ids=BINARY_ERRORS.keys()
)
def test_binary_size_errors(
    header_raw: tuple[dict[str, Any], bytes], specs: list[TensorSpec], needle: str
) -> None:
    header, raw = header_raw
    error = _validate_error(header, specs, 8, raw)
    assert error.field == "inputs.INPUT0"
    assert needle in error.message


# --------------------------------------------------------------------------- BYTES helpers


def test_bytes_tensor_encode_decode() -> None:
    values = [b"", b"abc", "ünïcode".encode(), b"\x00" * 300]
    encoded = bytes_tensor_encode(values)
    assert encoded[:4] == b"\x00\x00\x00\x00"
    assert encoded[4:11] == b"\x03\x00\x00\x00abc"
    assert bytes_tensor_decode(encoded) == values
    assert bytes_tensor_decode(encoded, 4) == values
    assert bytes_tensor_decode(memoryview(encoded)) == values
    assert bytes_tensor_encode([]) == b""
    assert bytes_tensor_decode(b"") == []
    assert bytes_tensor_decode(b"", 0) == []
    with pytest.raises(ValueError, match="left over"):
        bytes_tensor_decode(encoded, 3)
    with pytest.raises(ValueError, match="cannot hold"):
        bytes_tensor_decode(encoded, 400)
    with pytest.raises(ValueError, match="truncated"):
        bytes_tensor_decode(encoded + b"\x01")
    with pytest.raises(ValueError, match="runs past"):
        bytes_tensor_decode(struct.pack("<I", 5) + b"abc")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=30))
def test_bytes_tensor_round_trip_property(values: list[bytes]) -> None:
    encoded = bytes_tensor_encode(values)
    assert bytes_tensor_decode(encoded, len(values)) == values


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.one_of(st.none(), st.integers(-5, 250)))
def test_request_parse_fuzz_only_raises_kserve_error(body: bytes, length: int | None) -> None:
    status = 0
    try:
        request_parse(body, length)
    except KServeError as error:
        status = error.status
    assert status in (0, 400)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(DATATYPES - {"BYTES"})),
    st.lists(st.integers(1, 4), min_size=1, max_size=3),
    st.booleans(),
)
def test_random_round_trip_property(datatype: str, shape: list[int], binary: bool) -> None:
    rng = np.random.default_rng(len(shape) * 31 + sum(shape))
    dtype = DATATYPE_NUMPY[datatype]
    array = (rng.random(shape) * 100).astype(dtype)
    if datatype == "FP16":
        binary = True
    body, length = request_build([("X", array)], ["Y"], binary=binary)
    spec = [TensorSpec("X", datatype, [-1] + [-1] * (len(shape) - 1))]
    parsed, batch = _parse_validate(body, length, spec, 4)
    assert batch == shape[0]
    assert np.array_equal(parsed.inputs[0].as_numpy(), array)


# --------------------------------------------------------------------------- big bodies


def test_big_binary_body_is_not_copied() -> None:
    array = np.random.default_rng(0).random((64, 65536), dtype=np.float32)  # 16 MiB
    body, length = request_build([("INPUT0", array)], ["OUT"])
    parsed = request_parse(body, length)
    spec = [TensorSpec("INPUT0", "FP32", [-1, 65536])]
    batch = request_validate(parsed, spec, 64, max_elements=64 * 65536)
    assert batch == 64
    binary = parsed.inputs[0].binary
    assert binary is not None
    assert binary.obj is body  # a view of the request body, not a copy
    assert np.array_equal(parsed.inputs[0].as_numpy(), array)
    assert count_units(parsed) == 64 * 65536
    with pytest.raises(KServeError):
        request_validate(
            parsed, [TensorSpec("INPUT0", "FP32", [-1, 65536])], 64, max_elements=1_000_000
        )


def test_big_json_and_bytes_bodies() -> None:
    array = np.arange(200_000, dtype=np.int32).reshape(100, 2000)
    body, length = request_build([("INPUT0", array)], ["OUT"], binary=False)
    parsed, batch = _parse_validate(body, length, [TensorSpec("INPUT0", "INT32", [-1, 2000])], 128)
    assert batch == 100
    assert np.array_equal(parsed.inputs[0].as_numpy(), array)
    texts = np.array([[f"sentence number {i}".encode()] for i in range(20_000)], dtype=object)
    for binary in (True, False):
        body, length = request_build([("text", texts)], ["embedding"], binary=binary)
        parsed, batch = _parse_validate(
            body, length, [TensorSpec("text", "BYTES", [-1, 1])], 32_768
        )
        assert batch == 20_000
        assert parsed.inputs[0].as_numpy().tolist() == texts.tolist()


# --------------------------------------------------------------------------- responses


def _response(outputs: list[tuple[str, np.ndarray, bool]]) -> tuple[bytes, int | None]:
    """A Triton-style infer response with each output in binary or JSON form."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array, binary in outputs:
        datatype = datatype_of(array.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = (
                bytes_tensor_encode(array.ravel().tolist())
                if datatype == "BYTES"
                else array.tobytes()
            )
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [v.decode() for v in array.ravel().tolist()]
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    header = {"model_name": "m", "model_version": "1", "outputs": entries}
    return _body(header, *chunks)


RESPONSE_ARRAYS: list[tuple[str, np.ndarray]] = [
    ("F", np.arange(6, dtype=np.float32).reshape(2, 3)),
    ("I", np.array([[-(2**63)], [2**63 - 1]], dtype=np.int64)),
    ("B", np.array([[True, False]])),
    ("H", np.array([1.5, -2.0], dtype=np.float16)),
    ("S", np.array([[b"alpha"], [b"\xc3\xa9"]], dtype=object)),
]


@pytest.mark.parametrize("binary", [True, False])
def test_response_parse_round_trip(binary: bool) -> None:
    body, length = _response([(n, a, binary) for n, a in RESPONSE_ARRAYS])
    result = response_parse(body, length)
    assert list(result) == [n for n, _ in RESPONSE_ARRAYS]
    for name, array in RESPONSE_ARRAYS:
        assert result[name].dtype == DATATYPE_NUMPY[datatype_of(array.dtype)]
        assert result[name].shape == array.shape
        assert result[name].tolist() == array.tolist()


def test_response_parse_nested_json_and_nan() -> None:
    body = (
        b'{"outputs": [{"name": "O", "datatype": "FP32", "shape": [2, 2],'
        b' "data": [[1, NaN], [Infinity, 4]]}]}'
    )
    out = response_parse(body, None)["O"]
    assert out.shape == (2, 2)
    assert np.isnan(out[0, 1])
    assert np.isinf(out[1, 0])


RESPONSE_ERRORS = {
    "error object": (b'{"error": "model not ready"}', None, "error"),
    "not json": (b"<html>", None, "body"),
    "no outputs": (b"{}", None, "outputs"),
    "bad output": (b'{"outputs": [{"name": "O"}]}', None, "outputs[0]"),
    "unknown datatype": (
        b'{"outputs": [{"name": "O", "datatype": "X", "shape": [1], "data": [1]}]}',
        None,
        "outputs[0].datatype",
    ),
    "count mismatch": (
        b'{"outputs": [{"name": "O", "datatype": "FP32", "shape": [2], "data": [1]}]}',
        None,
        "outputs[0]",
    ),
    "bytes json not str": (
        b'{"outputs": [{"name": "O", "datatype": "BYTES", "shape": [1], "data": [3]}]}',
        None,
        "outputs[0]",
    ),
    "bad header length": (b"{}", 99, "Inference-Header-Content-Length"),
}


@pytest.mark.parametrize(
    ("body", "length", "field"), RESPONSE_ERRORS.values(), ids=RESPONSE_ERRORS.keys()
)
def test_response_parse_errors(body: bytes, length: int | None, field: str) -> None:
    with pytest.raises(KServeError) as info:
        response_parse(body, length)
    assert (info.value.field, info.value.status, info.value.code) == (
        field,
        502,
        "invalid_response",
    )


def test_response_parse_binary_size_errors() -> None:
    body, length = _response([("F", np.zeros(4, np.float32), True)])
    with pytest.raises(KServeError) as info:
        response_parse(body + b"\x00", length)
    assert info.value.field == "body"
    with pytest.raises(KServeError) as info:
        response_parse(body[:-1], length)
    assert info.value.field == "outputs[0]"
    header = (
        b'{"outputs": [{"name": "O", "datatype": "FP32", "shape": [2],'
        b' "parameters": {"binary_data_size": 4}}]}'
    )
    with pytest.raises(KServeError) as info:
        response_parse(header + b"\x00" * 4, len(header))
    assert "needs 8" in info.value.message


# --------------------------------------------------------------------------- tritonclient


@pytest.fixture(scope="module")
def th() -> ModuleType:
    return pytest.importorskip("tritonclient.http")


def _client_request(
    th: Any,
    arrays: list[tuple[str, np.ndarray, bool]],
    outputs: list[tuple[str, bool]] | None,
    **kwargs: Any,
) -> tuple[bytes, int | None]:
    inputs = []
    for name, array, binary in arrays:
        infer_input = th.InferInput(name, list(array.shape), th.np_to_triton_dtype(array.dtype))
        infer_input.set_data_from_numpy(array, binary_data=binary)
        inputs.append(infer_input)
    requested = (
        None
        if outputs is None
        else [th.InferRequestedOutput(name, binary_data=binary) for name, binary in outputs]
    )
    body, length = th.InferenceServerClient.generate_request_body(
        inputs, outputs=requested, **kwargs
    )
    assert isinstance(body, bytes)
    return body, length


CLIENT_CASES = {
    "fp32": (np.arange(4, dtype=np.float32).reshape(1, 4) / 3, [-1, 4]),
    "fp32 batch": (np.random.default_rng(1).random((5, 3, 2), dtype=np.float32), [-1, 3, 2]),
    "int64": (np.array([[-(2**63), 0, 2**63 - 1]], dtype=np.int64), [-1, 3]),
    "int64 batch": (np.arange(12, dtype=np.int64).reshape(4, 3) * -(10**12), [-1, 3]),
    "bytes": (np.array([[b"hello"]], dtype=object), [-1, 1]),
    "bytes batch": (
        np.array([[b"hello world"], [b""], ["ünï".encode()], [b"x" * 1000]], dtype=object),
        [-1, 1],
    ),
    "bool": (np.array([[True, False, True]]), [-1, 3]),
    "uint8": (np.arange(256, dtype=np.uint8).reshape(2, 128), [-1, 128]),
}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize(("array", "shape"), CLIENT_CASES.values(), ids=CLIENT_CASES.keys())
def test_tritonclient_request_accepted(
    th: Any, array: np.ndarray, shape: list[int], binary: bool
) -> None:
    body, length = _client_request(th, [("INPUT0", array, binary)], [("OUTPUT0", True)])
    assert (length is not None) == binary
    datatype = th.np_to_triton_dtype(array.dtype)
    parsed, batch = _parse_validate(body, length, [TensorSpec("INPUT0", datatype, shape)], 8)
    assert batch == array.shape[0]
    tensor = parsed.inputs[0]
    assert (tensor.binary is not None) == binary
    decoded = tensor.as_numpy()
    assert decoded.shape == array.shape
    assert decoded.tolist() == array.tolist()
    assert count_units(parsed) == array.size
    assert parsed.header["outputs"] == [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]


def test_tritonclient_fp16_binary_and_multi_input(th: Any) -> None:
    a = np.array([[1.5, -2.25]], dtype=np.float16)
    b = np.array([[7], [8]], dtype=np.int64)[:1]
    c = np.array([["q"]], dtype=object)  # str elements are UTF-8 encoded by the client
    body, length = _client_request(
        th,
        [("A", a, True), ("B", b, False), ("C", c, True)],
        None,
        request_id="abc",
        priority=2,
        timeout=1000,
        parameters={"custom": "x"},
    )
    specs = [
        TensorSpec("A", "FP16", [-1, 2]),
        TensorSpec("B", "INT64", [-1, 1]),
        TensorSpec("C", "BYTES", [-1, 1]),
    ]
    parsed, batch = _parse_validate(body, length, specs, 8)
    assert batch == 1
    assert parsed.header["id"] == "abc"
    assert parsed.header["parameters"] == {
        "priority": 2,
        "timeout": 1000,
        "binary_data_output": True,
        "custom": "x",
    }
    assert parsed.inputs[0].as_numpy().tolist() == a.tolist()
    assert parsed.inputs[1].as_numpy().tolist() == b.tolist()
    assert parsed.inputs[2].as_numpy().tolist() == [[b"q"]]


def test_tritonclient_wrong_shape_rejected(th: Any) -> None:
    array = np.zeros((9, 4), dtype=np.float32)
    body, length = _client_request(th, [("INPUT0", array, True)], [("OUTPUT0", True)])
    parsed = request_parse(body, length)
    with pytest.raises(KServeError) as info:
        request_validate(parsed, FP32_SPEC, 8, max_elements=MAX)
    assert info.value.field == "inputs.INPUT0"
    assert "batch size 9" in info.value.message


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_request_build_matches_tritonclient(th: Any, binary: bool) -> None:
    arrays = [
        ("text", np.array([[b"first"], [b"second"]], dtype=object)),
        ("ids", np.array([[1, 2], [3, 4]], dtype=np.int64)),
        ("x", np.array([[0.25, 0.5]], dtype=np.float32)),
    ]
    ours, our_length = request_build(arrays, ["embedding"], binary=binary)
    theirs, their_length = _client_request(
        th, [(n, a, binary) for n, a in arrays], [("embedding", binary)]
    )
    assert (our_length is None) == (their_length is None)
    if binary:
        assert our_length is not None
        assert their_length is not None
        assert json.loads(ours[:our_length]) == json.loads(theirs[:their_length])
        assert ours[our_length:] == theirs[their_length:]
    else:
        assert json.loads(ours) == json.loads(theirs)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_response_parse_agrees_with_tritonclient(th: Any, binary: bool) -> None:
    body, length = _response([(n, a, binary) for n, a in RESPONSE_ARRAYS])
    theirs = th.InferenceServerClient.parse_response_body(body, header_length=length)
    ours = response_parse(body, length)
    for name, array in RESPONSE_ARRAYS:
        expected = theirs.as_numpy(name)
        assert ours[name].shape == expected.shape == array.shape
        if array.dtype == object and not binary:
            # The client leaves JSON BYTES as str; we always return bytes.
            assert ours[name].tolist() == [[v.encode() for v in row] for row in expected.tolist()]
        else:
            assert ours[name].dtype == expected.dtype
            assert ours[name].tolist() == expected.tolist()
