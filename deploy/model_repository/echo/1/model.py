"""Triton Python-backend model ``echo``: returns ``INPUT0`` (FP32, [batch, -1]) as ``OUTPUT0``.

The smallest model there is; tests and benchmarks use it to measure the serving path
itself. Each request of a dynamic batch is answered on its own, so requests with
different lengths can share one ``execute`` call.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]


class TritonPythonModel:
    """Identity over FP32 tensors."""

    def initialize(self, args: dict[str, str]) -> None:
        """Nothing to load."""

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request, ``OUTPUT0`` equal to ``INPUT0``."""
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            output = pb_utils.Tensor("OUTPUT0", np.ascontiguousarray(data, dtype=np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
        return responses

    def finalize(self) -> None:
        """Nothing to release."""
