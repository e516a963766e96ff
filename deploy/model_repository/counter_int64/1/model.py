"""Triton Python-backend model ``counter_int64``: row sums of an INT64 tensor.

Input ``values`` INT64 [batch, -1]; output ``sum`` INT64 [batch, 1]. Exists so that tests
exercise 64-bit integers through every client path (JSON, binary, gRPC).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]


class TritonPythonModel:
    """``values.sum(axis=1)`` kept as INT64."""

    def initialize(self, args: dict[str, str]) -> None:
        """Nothing to load."""

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request."""
        responses = []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "values").as_numpy()
            sums = values.astype(np.int64).sum(axis=1, dtype=np.int64).reshape(-1, 1)
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("sum", sums)])
            )
        return responses

    def finalize(self) -> None:
        """Nothing to release."""
