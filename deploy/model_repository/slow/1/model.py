"""Triton Python-backend model ``slow``: echoes FP32 ``INPUT0`` after a fixed delay.

The delay per request is the model parameter ``delay_ms`` from ``config.pbtxt`` (200 ms
there), unless the environment variable ``CANGO_SLOW_DELAY_MS`` is set when the model
loads. With one instance and ``max_queue_size: 2`` this model serves one request at a
time and keeps at most two waiting: tests use it for timeouts, queue-depth metrics and
back-pressure ("Exceeds maximum queue size").
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

ENV_DELAY = "CANGO_SLOW_DELAY_MS"
DEFAULT_DELAY_MS = 200.0


def delay_seconds(model_config: dict[str, Any], environ: dict[str, str]) -> float:
    """The delay per request: the environment first, then the model parameter, then 200 ms."""
    raw = environ.get(ENV_DELAY)
    if raw is None or not raw.strip():
        parameter = model_config.get("parameters", {}).get("delay_ms", {})
        raw = parameter.get("string_value") or str(DEFAULT_DELAY_MS)
    delay_ms = float(raw)
    if delay_ms < 0:
        raise ValueError(f"delay must not be negative, got {delay_ms} ms")
    return delay_ms / 1000.0


class TritonPythonModel:
    """Sleep, then echo."""

    delay: float = DEFAULT_DELAY_MS / 1000.0

    def initialize(self, args: dict[str, str]) -> None:
        """Read the delay from the model config and the environment."""
        self.delay = delay_seconds(json.loads(args["model_config"]), dict(os.environ))

    def execute(self, requests: list[Any]) -> list[Any]:
        """Sleep ``delay`` for each request, then return ``INPUT0`` as ``OUTPUT0``."""
        responses = []
        for request in requests:
            time.sleep(self.delay)
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            output = pb_utils.Tensor("OUTPUT0", np.ascontiguousarray(data, dtype=np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
        return responses

    def finalize(self) -> None:
        """Nothing to release."""
