"""``PromptEncoder``: PEFT's P-tuning prompt encoder (MLP or bidirectional LSTM reparameterization)
over the fast path kernels/encoder.py (plain statement: core/encoder.py; math: spec/mlp.md, spec/lstm.md).

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
from mpt_ref.core.lstm_stack import init_lstm_stack
from mpt_ref.core.mlp_head import init_mlp_head
from mpt_ref.errors import ConfigError, InputTypeError
from mpt_ref.io.adapter_files import ENCODER_NAME, TABLE_KEY
from mpt_ref.kernels.embedding import EmbeddingCache, embedding_backward, embedding_forward
from mpt_ref.kernels.encoder import prompt_encoder_backward, prompt_encoder_forward
from mpt_ref.io.checkpoint import safetensors_bytes
from mpt_ref.modules.base import Module, Prepared
from mpt_ref.modules.config import PromptEncoderConfig
from mpt_ref.modules.config import PromptEncoderReparameterizationType as EncoderType
from mpt_ref.modules.dropout import DropoutPolicy
from mpt_ref.modules.peft_texts import (
    MLP_NUM_LAYERS,
    PEFT_TYPE_ERROR,
    lstm_dropout_warning,
    mlp_num_layers_warning,
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

        self.seed = _checks.seed(seed)  # the init seed (None: fresh entropy), stamped into ONNX exports
        self._dropout = DropoutPolicy(self.dropout, self.num_layers, H, self.dtype, self._no_dropout_reason())
        self.rng = np.random.default_rng(self.seed)  # init draws first, then dropout masks
        params = {"embedding.weight": self.rng.standard_normal((T, D)).astype(self.dtype)}  # N(0, 1)
        if not self.inference_mode and encoder_type == EncoderType.LSTM:
            params.update(init_lstm_stack(self.rng, D, H, self.num_layers, self.dtype))
            params.update(init_mlp_head(self.rng, (2 * H, 2 * H, D), self.dtype))
        elif not self.inference_mode:
            params.update(init_mlp_head(self.rng, (D, H, H, D), self.dtype))
        self._install(params)

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
        return self._dropout.has_dropout

    def _no_dropout_reason(self) -> str:
        """Why the architecture has no dropout, or "" when it has (modules/dropout.py)."""
        if self.inference_mode:
            return "inference_mode=True has no encoder"
        if self.encoder_type == EncoderType.MLP:
            return "the MLP encoder has no dropout"
        if self.dropout == 0:
            return "encoder_dropout is 0"
        if self.num_layers == 1:
            return "a 1-layer LSTM has no inter-layer dropout"
        return ""

    def sample_dropout_masks(self, batch_size: int, tokens: int | None = None, *, rng: np.random.Generator | None = None) -> list[np.ndarray]:
        """L−1 boolean keep masks (B, T', 2H), each entry kept with probability 1 − p, from ``rng`` (default:
        the module's generator). [] when the encoder has no dropout. Pass them to forward and backward."""
        tokens = self.total_virtual_tokens if tokens is None else tokens
        return self._dropout.sample_masks(self.rng if rng is None else rng, batch_size, tokens)

    # -- forward / backward (the bodies are modules/base.py's) ----------------------------------------

    def _prepare(self, indices: Any, *, dropout_masks: Any = None, draw: bool) -> Prepared:
        ids = _checks.indices(indices, self.total_virtual_tokens)  # B,T'
        scales = self._dropout.scales(dropout_masks, ids.shape, training=self.training, draw=draw, rng=self.rng)
        return Prepared(ids, dropout_scales=scales)

    def _forward_core(self, prepared: Prepared) -> tuple[Array, Any]:
        ids, scales = prepared.indices, prepared.dropout_scales
        if self.inference_mode:
            return embedding_forward(self._params["embedding.weight"], ids)
        return prompt_encoder_forward(  # without dropout: each distinct input once (kernels/encoder.py)
            self._params, ids, encoder_type=self.encoder_type, num_layers=self.num_layers, dropout_scales=scales
        )

    def _backward_core(self, dout: Array, cache: Any) -> Params:
        if isinstance(cache, EmbeddingCache):
            return {"embedding.weight": embedding_backward(dout, cache)}
        return prompt_encoder_backward(dout, cache)

    def forward(self, indices: Any, *, dropout_masks: Sequence[Any] | None = None) -> Array:
        """indices (B, T') in [0, T) -> (B, T', D). PEFT always passes arange(T) rows."""
        return self._forward(indices, dropout_masks=dropout_masks)

    def backward(self, dout: Any, indices: Any, *, dropout_masks: Sequence[Any] | None = None) -> Params:
        """Gradient of sum(forward(indices, dropout_masks=...) * dout), keyed like ``state_dict()``. Reuses
        the last forward's work when it provably applies (modules/base.py), else recomputes."""
        return self._backward(dout, indices, dropout_masks=dropout_masks)

    def forward_backward(self, dout: Any, indices: Any, *,
                         dropout_masks: Sequence[Any] | None = None) -> tuple[Array, Params]:
        """(forward, backward) from a single forward pass; in train mode with dropout the masks must be
        given (the same ones a separate forward would have used)."""
        return self._forward_backward(dout, indices, dropout_masks=dropout_masks)

    def adapter_tensors(self) -> Params:
        """The eval-mode encoder output as ``prompt_embeddings`` (PEFT saves P-tuning pre-reparameterized)."""
        return {TABLE_KEY: self.prompt_table()}

    def adapter_files(self) -> dict[str, bytes]:
        """PEFT's two files, plus ``mpt_ref_encoder.safetensors`` with the full encoder when it has one."""
        files = super().adapter_files()
        if not self.inference_mode:
            files[ENCODER_NAME] = safetensors_bytes(self.state_dict(), {"format": "mpt-ref", "note": "full encoder"})
        return files

    def get_prompt(self, batch_size: int) -> Array:
        """What PEFT's ``get_prompt`` returns for P-tuning: the encoder applied to arange(T) in every one
        of ``batch_size`` rows, (B, T, D), in the module's mode (train mode with dropout draws masks, as
        PEFT does; ``prompt_table()`` is always eval mode)."""
        B = _checks.positive_int("batch_size", batch_size, minimum=0)
        T = self.total_virtual_tokens
        if B == 0:
            return np.zeros((0, T, self.token_dim), dtype=self.dtype)
        return self.forward(np.tile(np.arange(T, dtype=np.int64), (B, 1)))

    def prompt_table(self) -> Array:
        """(T, D): the eval-mode output for arange(T), i.e. what PEFT saves as ``prompt_embeddings``
        (in inference mode: ``embedding.weight`` itself). Always eval mode, unlike PEFT, which bakes a
        dropout mask in when saved from train mode (spec/differences.md #18); the module's mode is left unchanged."""
        if self.inference_mode:
            return self._params["embedding.weight"].copy()
        ids = np.arange(self.total_virtual_tokens)[None]  # 1,T
        out, _ = prompt_encoder_forward(self._params, ids, encoder_type=self.encoder_type, num_layers=self.num_layers)
        return out[0]
