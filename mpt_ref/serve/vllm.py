"""Serving a prompt adapter on vLLM through ``prompt_embeds`` (spec/serving.md, "vLLM").

vLLM takes, instead of token ids, a request's input embeddings (``LLM(..., enable_prompt_embeds=True)``
offline, ``--enable-prompt-embeds`` for its OpenAI-compatible server). PEFT's forward is exactly such a
request: the adapter's prompt rows for the request's task, then the base model's word embeddings of the
ids,

    prompt_embeds = concat(table[k, :N], W[input_ids])          (N + S, D)

with ``table`` the (K, T, D) prompt table (``mpt_ref.serve.prompt_table.prompt_table``: computed in float64,
rounded once) and W the base model's embedding matrix. vLLM then runs the base model on them, with
positions 0 .. N + S - 1 and every position attended, as PEFT does for an unpadded request.

Nothing here needs torch: the HTTP payload is the base64 of the bytes ``torch.save`` writes for a tensor,
and ``tensor_bytes`` writes those bytes itself (a zip holding the pickle of ``_rebuild_tensor_v2`` and the
raw storage), which the server's ``torch.load(weights_only=True)`` reads. ``offline_prompt`` (the
``LLM.generate`` input) is the one function that imports torch.
"""

from __future__ import annotations

import base64
import io
import struct
import zipfile
from typing import Any

import numpy as np

from mpt_ref import _checks
from mpt_ref.errors import IndexRangeError, InputError

# numpy dtype -> the torch storage class torch.save names for it
STORAGES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float16): "HalfStorage",
            np.dtype(np.float64): "DoubleStorage"}


def request_embeds(table: Any, word_embeddings: Any, input_ids: Any, task: int = 0, *,
                   num_virtual_tokens: int | None = None) -> np.ndarray:
    """(N + S, D): the prompt rows of ``task`` (table (K, T, D), the first N = ``num_virtual_tokens`` rows,
    default all T) followed by W[input_ids] (input_ids (S,)), in the table's dtype."""
    t = np.asarray(table)
    w = np.asarray(word_embeddings)
    if t.ndim != 3 or w.ndim != 2 or t.shape[2] != w.shape[1]:
        raise InputError(f"table, word_embeddings: expected (K, T, D) and (V, D) with one D, got shapes {t.shape} "
                         f"and {w.shape}")
    raw = np.asarray(input_ids)
    ids = _checks.int_array("input_ids", raw.astype(np.int64) if raw.size == 0 else raw, ndim=1)  # [] reads as float
    K, T, _ = t.shape
    N = T if num_virtual_tokens is None else _checks.positive_int("num_virtual_tokens", num_virtual_tokens)
    if N > T:
        raise InputError(f"num_virtual_tokens: expected at most T={T}, got {N}")
    if isinstance(task, bool) or not isinstance(task, (int, np.integer)) or not 0 <= task < K:
        raise IndexRangeError(f"task: expected a task id in [0, {K}), got {task!r}")
    if ids.size and (ids.min() < 0 or ids.max() >= w.shape[0]):
        raise IndexRangeError(f"input_ids: expected ids in [0, {w.shape[0]}), got min {ids.min()}, max {ids.max()}")
    return np.concatenate([t[int(task), :N], w[ids].astype(t.dtype)], axis=0)


def _pickle_str(s: str) -> bytes:
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _pickle_int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def _pickle_int_tuple(values: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(_pickle_int(v) for v in values) + b"t"


def tensor_bytes(array: Any) -> bytes:
    """The bytes ``torch.save(torch.from_numpy(array))`` writes (zip format, pickle protocol 2), written
    without torch; ``torch.load(..., weights_only=True)`` reads them back as that tensor."""
    a = np.ascontiguousarray(array)
    if a.dtype not in STORAGES:
        raise InputError(f"array: expected float32, float16 or float64, got dtype {a.dtype}")
    if any(d > 2**31 - 1 for d in a.shape) or a.size > 2**31 - 1:
        raise InputError(f"array: expected dims below 2^31, got shape {a.shape}")
    strides = tuple(s // a.itemsize for s in a.strides)
    pkl = (b"\x80\x02" + b"ctorch._utils\n_rebuild_tensor_v2\n" + b"("
           + b"(" + _pickle_str("storage") + b"ctorch\n" + STORAGES[a.dtype].encode() + b"\n"
           + _pickle_str("0") + _pickle_str("cpu") + _pickle_int(a.size) + b"tQ"  # persistent id -> storage
           + _pickle_int(0) + _pickle_int_tuple(a.shape) + _pickle_int_tuple(strides)
           + b"\x89" + b"ccollections\nOrderedDict\n)R"  # requires_grad False, backward hooks {}
           + b"tR.")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/data/0", a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
        zf.writestr("archive/version", "3\n")
    return buf.getvalue()


def encode_prompt_embeds(embeds: Any) -> str:
    """The ``prompt_embeds`` string vLLM's OpenAI-compatible server takes: base64 of ``tensor_bytes``."""
    e = np.asarray(embeds)
    if e.ndim != 2:
        raise InputError(f"embeds: expected (tokens, D), got shape {e.shape}")
    return base64.b64encode(tensor_bytes(e)).decode("ascii")


def completion_request(embeds: Any, *, model: str, max_tokens: int, logprobs: int | None = None,
                       **extra: Any) -> dict[str, Any]:
    """A greedy ``POST /v1/completions`` body for one request's ``prompt_embeds`` (N + S, D)."""
    body: dict[str, Any] = {"model": model, "prompt_embeds": encode_prompt_embeds(embeds),
                            "max_tokens": _checks.positive_int("max_tokens", max_tokens), "temperature": 0.0}
    if logprobs is not None:
        body["logprobs"] = logprobs
    body.update(extra)
    return body


def offline_prompt(embeds: Any) -> dict[str, Any]:
    """The ``LLM.generate`` input for one request: {"prompt_embeds": a torch tensor (N + S, D)}."""
    try:
        import torch
    except ImportError:  # pragma: no cover - the vLLM environment always has torch
        raise InputError("offline_prompt: expected torch (installed with vllm), got none; use completion_request "
                         "for the HTTP server, which needs no torch") from None
    return {"prompt_embeds": torch.from_numpy(np.ascontiguousarray(embeds))}
