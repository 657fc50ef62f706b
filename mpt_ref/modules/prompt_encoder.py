"""``PromptEncoder``: PEFT's P-tuning prompt encoder (MLP or bidirectional LSTM reparameterization)
over the functional core in core/encoder.py (math: spec/mlp.md, spec/lstm.md).

The class validates its inputs once, owns the parameters under PEFT's state_dict keys, the train/eval
flag and the dropout random generator. Shape letters as in core/encoder.py.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Sequence

import numpy as np

from mpt_ref import _checks
from mpt_ref._types import Array, Params
from mpt_ref.core.embedding import embedding_backward, embedding_forward
from mpt_ref.core.encoder import (
    EncoderCache,
    prompt_encoder_backward,
    prompt_encoder_forward,
)
from mpt_ref.core.encoder_dedup import dedup_backward, dedup_forward
from mpt_ref.core.lstm_stack import init_lstm_stack
from mpt_ref.core.mlp_head import init_mlp_head
from mpt_ref.errors import ConfigError, InputError, InputTypeError
from mpt_ref.io.adapter_files import ENCODER_NAME, TABLE_KEY
from mpt_ref.io.checkpoint import safetensors_bytes
from mpt_ref.modules.base import Module
from mpt_ref.modules.config import PromptEncoderConfig
from mpt_ref.modules.config import PromptEncoderReparameterizationType as EncoderType

PEFT_TYPE_ERROR = "Prompt encoder type not recognized. Please use one of MLP (recommended) or LSTM."
MLP_NUM_LAYERS = 2  # PEFT compares encoder_num_layers with this default and warns when it differs


def mlp_num_layers_warning(type_name: str) -> str:
    """PEFT's exact warning text for an MLP encoder whose encoder_num_layers != 2."""
    return (
        f"for {type_name}, the argument `encoder_num_layers` is ignored. "
        f"Exactly {MLP_NUM_LAYERS} MLP layers are used."
    )


def lstm_dropout_warning(dropout: float, num_layers: int) -> str:
    """torch.nn.LSTM's exact warning text for dropout > 0 with a single layer."""
    return (
        "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
        f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}"
    )


class PromptEncoder(Module):
    """P-tuning prompt encoder. ``PromptEncoder(config, seed=0)`` then ``forward(indices)``.

    Parameters (PEFT's state_dict order): ``embedding.weight`` (T, D); LSTM mode:
    ``lstm_head.{weight_ih,weight_hh,bias_ih,bias_hh}_l{k}`` then the same with ``_reverse``, k = 0..L−1;
    then ``mlp_head.{0,2,4}.*`` (MLP) or ``mlp_head.{0,2}.*`` (LSTM). Init is PyTorch's default
    (spec/mlp.md, spec/lstm.md), drawn from ``numpy.random.default_rng(seed)`` in key order.

    ``inference_mode=True`` builds ``embedding.weight`` only (it then holds the already
    reparameterized prompt, as a loaded PEFT adapter does); forward is the plain lookup.

    Train/eval: like a torch module the encoder starts in train mode. Dropout only exists in LSTM mode
    with ``encoder_dropout`` p > 0 and L > 1 (between layers, inverted: kept values scaled by
    1/(1−p)). In that case ``forward`` takes ``dropout_masks`` — L−1 boolean keep masks (B, T', 2H)
    from ``sample_dropout_masks`` or your own — and draws fresh ones from the module's generator when
    they are omitted; ``backward`` must be given the same masks (it raises without them), so a forward
    and a backward always agree. In every other situation ``dropout_masks`` must be None (or empty).
    """

    config_class = PromptEncoderConfig

    def __init__(self, config: PromptEncoderConfig, *, seed: int | None = None, dtype: Any = np.float32) -> None:
        self.dtype = _checks.float_dtype("dtype", dtype)
        if not isinstance(config, PromptEncoderConfig):
            raise ConfigError(f"config: expected a PromptEncoderConfig, got {type(config).__name__}")
        raw_type = getattr(config.encoder_reparameterization_type, "value", config.encoder_reparameterization_type)
        try:
            encoder_type = EncoderType(raw_type)
        except ValueError:
            raise ConfigError(f"encoder_reparameterization_type: {PEFT_TYPE_ERROR} Got {raw_type!r}") from None
        if config.token_dim is None:
            raise ConfigError("token_dim: expected an integer >= 1, got None")
        T, D = config.total_virtual_tokens, config.token_dim
        H = config.encoder_hidden_size if config.encoder_hidden_size is not None else D  # PEFT fills H := D
        self.config = dataclasses.replace(config, encoder_hidden_size=H)
        self.encoder_type = encoder_type
        self.inference_mode = config.inference_mode
        self.total_virtual_tokens, self.token_dim, self.hidden_size = T, D, H
        self.input_size = self.output_size = D
        self.num_layers = config.encoder_num_layers if encoder_type == EncoderType.LSTM else MLP_NUM_LAYERS
        self.dropout = config.encoder_dropout if encoder_type == EncoderType.LSTM else 0.0  # MLP ignores it
        self.training = True

        if not self.inference_mode:  # PEFT warns only when it builds the heads
            if encoder_type == EncoderType.MLP and config.encoder_num_layers != MLP_NUM_LAYERS:
                warnings.warn(mlp_num_layers_warning(encoder_type.value), UserWarning, stacklevel=2)
            if encoder_type == EncoderType.LSTM and self.dropout > 0 and self.num_layers == 1:
                warnings.warn(lstm_dropout_warning(config.encoder_dropout, self.num_layers), UserWarning, stacklevel=2)

        self.rng = np.random.default_rng(_checks.seed(seed))  # init draws first, then dropout masks
        self._params = {"embedding.weight": self.rng.standard_normal((T, D)).astype(self.dtype)}  # N(0, 1)
        if self.inference_mode:
            return
        if encoder_type == EncoderType.LSTM:
            self._params.update(init_lstm_stack(self.rng, D, H, self.num_layers, self.dtype))
            self._params.update(init_mlp_head(self.rng, (2 * H, 2 * H, D), self.dtype))
        else:
            self._params.update(init_mlp_head(self.rng, (D, H, H, D), self.dtype))

    # -- mode -----------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> PromptEncoder:
        if not isinstance(mode, bool):
            raise InputTypeError(f"mode: expected a bool, got {mode!r}")
        self.training = mode
        return self

    def eval(self) -> PromptEncoder:
        return self.train(False)

    @property
    def has_dropout(self) -> bool:
        """Whether the architecture has inter-layer dropout (LSTM, p > 0, L > 1), in either mode."""
        return not self.inference_mode and self.encoder_type == EncoderType.LSTM and self.dropout > 0 and self.num_layers > 1

    def _no_dropout_reason(self) -> str:
        if self.inference_mode:
            return "inference_mode=True has no encoder"
        if self.encoder_type == EncoderType.MLP:
            return "the MLP encoder has no dropout"
        if self.dropout == 0:
            return "encoder_dropout is 0"
        if self.num_layers == 1:
            return "a 1-layer LSTM has no inter-layer dropout"
        return "eval mode"

    def sample_dropout_masks(self, batch_size: int, tokens: int | None = None, *, rng: np.random.Generator | None = None) -> list[np.ndarray]:
        """L−1 boolean keep masks (B, T', 2H), each entry kept with probability 1 − p, from ``rng`` (default:
        the module's generator). [] when the encoder has no dropout. Pass them to forward and backward."""
        if not self.has_dropout:
            return []
        B = _checks.positive_int("batch_size", batch_size, minimum=0)
        Tp = self.total_virtual_tokens if tokens is None else _checks.positive_int("tokens", tokens, minimum=0)
        rng = self.rng if rng is None else rng
        shape = (B, Tp, 2 * self.hidden_size)
        return [rng.random(shape) >= self.dropout for _ in range(self.num_layers - 1)]

    def _dropout_scales(self, masks: Any, shape: tuple[int, int], *, draw: bool) -> list[Array] | None:
        """Validated masks -> multipliers {0, 1/(1−p)} in the module dtype; None when no dropout applies."""
        if not (self.training and self.has_dropout):
            if masks is not None and len(masks) > 0:
                raise InputError(f"dropout_masks: expected None, because no dropout applies ({self._no_dropout_reason()}), "
                                 f"got {len(masks)} mask(s)")
            return None
        L, H = self.num_layers, self.hidden_size
        if masks is None:
            if not draw:
                raise InputError(
                    f"dropout_masks: expected the {L - 1} keep mask(s) forward used (train mode, encoder_dropout="
                    f"{self.dropout}, L={L}), got None; draw them with sample_dropout_masks() and pass the same "
                    "masks to forward and backward"
                )
            masks = self.sample_dropout_masks(*shape)
        if isinstance(masks, np.ndarray) or not isinstance(masks, Sequence) or len(masks) != L - 1:
            raise InputError(f"dropout_masks: expected a list of L-1={L - 1} boolean arrays, got {_checks._describe(masks)}")
        scale = np.asarray(1 / (1 - self.dropout), dtype=self.dtype)
        scales = []
        for k, mask in enumerate(masks):
            mask = np.asarray(mask)
            if mask.dtype != np.bool_:
                raise InputTypeError(f"dropout_masks[{k}]: expected a bool keep mask, got {_checks._describe(mask)}")
            if mask.shape != shape + (2 * H,):
                raise InputError(f"dropout_masks[{k}]: expected shape {shape + (2 * H,)} (B, T', 2H), got {mask.shape}")
            scales.append(mask * scale)  # B,T',2H  0 or 1/(1-p), module dtype
        return scales

    # -- forward / backward -------------------------------------------------------------------------

    def _run(self, ids: np.ndarray, dropout_masks: Any, *, draw: bool) -> tuple[Array, Any]:
        scales = self._dropout_scales(dropout_masks, ids.shape, draw=draw)
        if self.inference_mode:
            return embedding_forward(self._params["embedding.weight"], ids)
        if scales is None and ids.size:  # no per-row dropout: compute each distinct input once
            return dedup_forward(self._params, ids, encoder_type=self.encoder_type, num_layers=self.num_layers)
        return prompt_encoder_forward(
            self._params, ids, encoder_type=self.encoder_type, num_layers=self.num_layers, dropout_scales=scales
        )

    def forward(self, indices: Any, *, dropout_masks: Sequence[Any] | None = None) -> Array:
        """indices (B, T') in [0, T) -> (B, T', D). PEFT always passes arange(T) rows."""
        ids = _checks.indices(indices, self.total_virtual_tokens)
        return self._run(ids, dropout_masks, draw=True)[0]

    def backward(self, grad_output: Any, indices: Any, *, dropout_masks: Sequence[Any] | None = None) -> Params:
        """Gradient of sum(forward(indices, dropout_masks=...) * grad_output), keyed like ``state_dict()``."""
        return self.forward_backward(grad_output, indices, dropout_masks=dropout_masks)[1]

    def forward_backward(self, grad_output: Any, indices: Any, *,
                         dropout_masks: Sequence[Any] | None = None) -> tuple[Array, Params]:
        """(forward, backward) from a single forward pass; in train mode with dropout the masks must be
        given (the same ones a separate forward would have used)."""
        ids = _checks.indices(indices, self.total_virtual_tokens)
        dout = _checks.float_array("grad_output", grad_output, ids.shape + (self.token_dim,), self.dtype)
        out, cache = self._run(ids, dropout_masks, draw=False)
        if self.inference_mode:
            return out, {"embedding.weight": embedding_backward(dout, cache)}
        if not isinstance(cache, EncoderCache):
            return out, dedup_backward(dout, cache)
        return out, prompt_encoder_backward(dout, cache)

    def adapter_tensors(self) -> Params:
        """The eval-mode encoder output as ``prompt_embeddings`` (PEFT saves P-tuning pre-reparameterized)."""
        return {TABLE_KEY: self.prompt_table()}

    def adapter_files(self) -> dict[str, bytes]:
        """PEFT's two files, plus ``mpt_ref_encoder.safetensors`` with the full encoder when it has one."""
        files = super().adapter_files()
        if not self.inference_mode:
            files[ENCODER_NAME] = safetensors_bytes(self.state_dict(), {"format": "mpt-ref", "note": "full encoder"})
        return files

    def prompt_table(self) -> Array:
        """(T, D): the eval-mode output for arange(T), i.e. what PEFT saves as ``prompt_embeddings``
        (in inference mode: ``embedding.weight`` itself). Always eval mode, unlike PEFT, which bakes a
        dropout mask in when saved from train mode (quirk Q5); the module's mode is left unchanged."""
        if self.inference_mode:
            return self._params["embedding.weight"].copy()
        ids = np.arange(self.total_virtual_tokens)[None]  # 1,T
        out, _ = prompt_encoder_forward(self._params, ids, encoder_type=self.encoder_type, num_layers=self.num_layers)
        return out[0]
