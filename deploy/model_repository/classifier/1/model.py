"""Triton Python-backend model ``classifier``: a fixed linear softmax classifier.

Input ``features`` FP32 [batch, 4]. Outputs ``probabilities`` FP32 [batch, 3], the
softmax of ``features @ W + b`` with the constants below, and ``label`` INT64 [batch, 1],
the index of the largest probability. The weights are fixed so that tests can compute
the expected answer themselves.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

WEIGHTS: npt.NDArray[np.float32] = np.array(
    [
        [1.0, -1.0, 0.5],
        [-0.5, 2.0, -1.0],
        [0.25, 0.5, 1.5],
        [-1.0, 0.0, 1.0],
    ],
    dtype=np.float32,
)
BIAS: npt.NDArray[np.float32] = np.array([0.1, -0.2, 0.0], dtype=np.float32)


def classify(
    features: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Probabilities [n, 3] and labels [n, 1] for ``features`` [n, 4]."""
    logits = features.astype(np.float32) @ WEIGHTS + BIAS
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    probabilities = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
    labels = probabilities.argmax(axis=1).astype(np.int64).reshape(-1, 1)
    return probabilities, labels


class TritonPythonModel:
    """Softmax(features @ W + b) and its argmax."""

    def initialize(self, args: dict[str, str]) -> None:
        """Nothing to load: the weights are module constants."""

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request."""
        responses = []
        for request in requests:
            features = pb_utils.get_input_tensor_by_name(request, "features").as_numpy()
            probabilities, labels = classify(features)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("probabilities", probabilities),
                        pb_utils.Tensor("label", labels),
                    ]
                )
            )
        return responses

    def finalize(self) -> None:
        """Nothing to release."""
