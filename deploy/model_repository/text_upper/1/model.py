"""Triton Python-backend model ``text_upper``: a text model, BYTES in and BYTES out.

Input ``text`` (TYPE_STRING, [batch, 1]) holds UTF-8 strings. Outputs ``text`` (TYPE_STRING,
[batch, 1]), each string upper-cased and encoded as UTF-8 again, and ``length`` (INT64,
[batch, 1]), the number of Unicode characters of each input string. Bytes that are not
valid UTF-8 fail that request alone (INVALID_ARG, HTTP 400).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]


def as_text(item: object) -> str:
    """One element of a BYTES tensor as ``str`` (Triton hands over ``bytes``)."""
    if isinstance(item, bytes):
        return item.decode("utf-8")
    return str(item)


def upper(
    texts: npt.NDArray[np.object_],
) -> tuple[npt.NDArray[np.object_], npt.NDArray[np.int64]]:
    """Upper-cased UTF-8 bytes and character counts, both shaped like ``texts``."""
    decoded = [as_text(item) for item in texts.reshape(-1)]
    uppered = np.array([text.upper().encode("utf-8") for text in decoded], dtype=np.object_)
    lengths = np.array([len(text) for text in decoded], dtype=np.int64)
    return uppered.reshape(texts.shape), lengths.reshape(texts.shape)


class TritonPythonModel:
    """``str.upper`` and ``len`` over a batch of strings."""

    def initialize(self, args: dict[str, str]) -> None:
        """Nothing to load."""

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request; undecodable input becomes that request's error."""
        responses = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, "text").as_numpy()
            try:
                uppered, lengths = upper(texts)
            except UnicodeDecodeError as exc:
                responses.append(
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(
                            f"input 'text' is not valid UTF-8: {exc}",
                            pb_utils.TritonError.INVALID_ARG,
                        )
                    )
                )
                continue
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("text", uppered),
                        pb_utils.Tensor("length", lengths),
                    ]
                )
            )
        return responses

    def finalize(self) -> None:
        """Nothing to release."""
