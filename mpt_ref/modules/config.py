"""PEFT-compatible configs: field names, defaults, enum string values and ``adapter_config.json`` I/O.

The three dataclasses mirror PEFT's ``PromptTuningConfig``, ``MultitaskPromptTuningConfig`` and
``PromptEncoderConfig`` field for field, so a PEFT ``adapter_config.json`` loads here and ours loads in
PEFT. Validation is stricter than PEFT's wherever PEFT silently misbehaves; every such difference is
listed in spec/differences.md.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import numbers
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar

from mpt_ref import _checks
from mpt_ref.errors import CheckpointError, ConfigError, shown
from mpt_ref.io.adapter_files import CONFIG_NAME
from mpt_ref.io.atomic import atomic_write_bytes
from mpt_ref.io.limits import MAX_CONFIG_BYTES, exc_text, read_regular_file


class TaskType(str, enum.Enum):
    SEQ_CLS = "SEQ_CLS"
    SEQ_2_SEQ_LM = "SEQ_2_SEQ_LM"
    CAUSAL_LM = "CAUSAL_LM"
    TOKEN_CLS = "TOKEN_CLS"
    QUESTION_ANS = "QUESTION_ANS"
    FEATURE_EXTRACTION = "FEATURE_EXTRACTION"


class PeftType(str, enum.Enum):
    PROMPT_TUNING = "PROMPT_TUNING"
    MULTITASK_PROMPT_TUNING = "MULTITASK_PROMPT_TUNING"
    P_TUNING = "P_TUNING"


class PromptTuningInit(str, enum.Enum):
    TEXT = "TEXT"
    SAMPLE_VOCAB = "SAMPLE_VOCAB"
    RANDOM = "RANDOM"


class MultitaskPromptTuningInit(str, enum.Enum):
    TEXT = "TEXT"
    RANDOM = "RANDOM"
    AVERAGE_SOURCE_TASKS = "AVERAGE_SOURCE_TASKS"
    EXACT_SOURCE_TASK = "EXACT_SOURCE_TASK"
    ONLY_SOURCE_SHARED = "ONLY_SOURCE_SHARED"


class PromptEncoderReparameterizationType(str, enum.Enum):
    MLP = "MLP"
    LSTM = "LSTM"


SOURCE_INITS = frozenset(
    {
        MultitaskPromptTuningInit.AVERAGE_SOURCE_TASKS,
        MultitaskPromptTuningInit.EXACT_SOURCE_TASK,
        MultitaskPromptTuningInit.ONLY_SOURCE_SHARED,
    }
)


def _enum(name: str, value: Any, choices: type[enum.Enum] | tuple[type[enum.Enum], ...]) -> enum.Enum:
    """Coerce a str or enum member to a member of ``choices`` (first enum that has it)."""
    choices = choices if isinstance(choices, tuple) else (choices,)
    raw = value.value if isinstance(value, enum.Enum) else value
    for cls in choices:
        try:
            return cls(raw)
        except ValueError:
            continue
    allowed = sorted({m.value for cls in choices for m in cls})
    raise ConfigError(f"{name}: expected one of {allowed}, got {value!r}")


MAX_SIZE = 1 << 24    # every size field (tokens, widths, tasks, ranks, heads, ...): far beyond any real prompt
MAX_LAYERS = 1 << 10  # encoder_num_layers: PEFT's default is 2; each layer is a step of the Python loop


def _size(name: str, value: Any, minimum: int = 1, maximum: int = MAX_SIZE) -> int:
    value = _checks.positive_int(name, value, minimum=minimum)
    if value > maximum:
        raise ConfigError(f"{name}: expected at most {maximum}, got {value}")
    return value


def _optional_int(name: str, value: Any, minimum: int = 1) -> int | None:
    return None if value is None else _size(name, value, minimum=minimum)


def _check_text(name: str, value: Any, depth: int = 0) -> None:
    """Strings (also inside lists and dicts) must be valid Unicode: JSON's "\ud800" (a lone surrogate)
    loads in Python but can never be written back as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"{name}: expected valid Unicode text, got a lone surrogate in "
                              f"{shown(value.encode('utf-8', 'backslashreplace').decode(), 80)!r}") from None
    elif isinstance(value, (list, tuple)) and depth < 8:
        for v in value:
            _check_text(name, v, depth + 1)
    elif isinstance(value, dict) and depth < 8:
        for k, v in value.items():
            _check_text(name, k, depth + 1)
            _check_text(name, v, depth + 1)


@dataclasses.dataclass(kw_only=True)
class PromptLearningConfig:
    """Fields shared by the three prompt-learning configs (PEFT's PeftConfig + PromptLearningConfig)."""

    PEFT_TYPE: ClassVar[PeftType]

    task_type: TaskType | str | None = None
    peft_type: PeftType | str | None = None
    auto_mapping: dict | None = None
    peft_version: str | None = None
    base_model_name_or_path: str | None = None
    revision: str | None = None
    inference_mode: bool = False
    num_virtual_tokens: int | None = None
    token_dim: int | None = None
    num_transformer_submodules: int | None = None
    num_attention_heads: int | None = None
    num_layers: int | None = None
    modules_to_save: list[str] | None = None

    def __post_init__(self) -> None:
        self._validate()
        _cap_model(self)

    def _validate(self) -> None:
        """Each class checks its own fields (after its parent's); __post_init__ then caps the whole model."""
        for f in dataclasses.fields(self):
            _check_text(f.name, getattr(self, f.name))
        self.peft_type = self.PEFT_TYPE
        if self.task_type is not None:
            self.task_type = _enum("task_type", self.task_type, TaskType)
        if not isinstance(self.inference_mode, bool):
            raise ConfigError(f"inference_mode: expected a bool, got {self.inference_mode!r}")
        self.num_virtual_tokens = _optional_int("num_virtual_tokens", self.num_virtual_tokens)
        self.token_dim = _optional_int("token_dim", self.token_dim)
        self.num_attention_heads = _optional_int("num_attention_heads", self.num_attention_heads)
        self.num_layers = _optional_int("num_layers", self.num_layers)
        if self.num_transformer_submodules is None:  # PEFT fills this only when attached to a model
            self.num_transformer_submodules = 2 if self.task_type == TaskType.SEQ_2_SEQ_LM else 1
        self.num_transformer_submodules = _size("num_transformer_submodules", self.num_transformer_submodules)
        if self.num_virtual_tokens is not None and self.token_dim is not None:
            _cap("num_virtual_tokens x num_transformer_submodules x token_dim (the prompt table)",
                 self.num_virtual_tokens, self.num_transformer_submodules, self.token_dim)

    @property
    def total_virtual_tokens(self) -> int:
        """T = num_virtual_tokens * num_transformer_submodules (N·S)."""
        if self.num_virtual_tokens is None:
            raise ConfigError("num_virtual_tokens: expected an integer >= 1, got None")
        return self.num_virtual_tokens * self.num_transformer_submodules

    # -- dict / JSON --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """All fields, enum members as their string values (PEFT's ``asdict``)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.value if isinstance(v, enum.Enum) else v
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptLearningConfig:
        """Build from a dict; unknown keys are warned about and dropped, as PEFT does."""
        if not isinstance(data, dict):
            raise ConfigError(f"config: expected a dict, got {type(data).__name__}")
        peft_type = data.get("peft_type")
        if peft_type is not None and str(getattr(peft_type, "value", peft_type)) != cls.PEFT_TYPE.value:
            raise ConfigError(f"peft_type: expected {cls.PEFT_TYPE.value!r} for {cls.__name__}, got {peft_type!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            warnings.warn(f"Unexpected keyword arguments {unknown} for class {cls.__name__}, these are ignored.")
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json(self, *, inference_mode: bool | None = True) -> str:
        """``adapter_config.json`` text: sorted keys, indent 2, no trailing newline (PEFT writes
        ``inference_mode: true`` on disk; pass ``inference_mode=None`` to keep the field as is)."""
        d = self.to_dict()
        if inference_mode is not None:
            d["inference_mode"] = inference_mode
        return json.dumps(d, indent=2, sort_keys=True)

    def save_pretrained(self, save_directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``<save_directory>/adapter_config.json`` atomically; returns its path."""
        return atomic_write_bytes(
            Path(save_directory) / CONFIG_NAME, self.to_json().encode(), overwrite=overwrite
        )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> PromptLearningConfig:
        """Read an ``adapter_config.json`` (or the directory holding one)."""
        return cls.from_dict(_read_json(path))


MAX_PARAMETER_ELEMENTS = 1 << 31  # 8 GiB of float32 in one parameter: far beyond any prompt, before any allocation
MAX_MODEL_ELEMENTS = 1 << 30      # all parameters of one module together: 4 GiB of float32


def _cap(what: str, *factors: int) -> None:
    """Refuse a parameter of more than MAX_PARAMETER_ELEMENTS elements before anything is allocated
    (a hostile adapter_config.json asking for 10**9 x 10**9 would otherwise end in a bare MemoryError)."""
    n = 1
    for f in factors:
        n *= f
    if n > MAX_PARAMETER_ELEMENTS:
        raise ConfigError(f"{what}: expected at most {MAX_PARAMETER_ELEMENTS} elements per parameter, got {n}")


def parameter_shapes(config: PromptLearningConfig, *, full_encoder: bool | None = None) -> dict[str, tuple[int, ...]]:
    """Every state_dict key of the module ``config`` describes, with its shape, in PEFT's order, computed
    without allocating anything. P-tuning: the full encoder unless ``inference_mode`` (or
    ``full_encoder=False``: the prompt table alone)."""
    if config.num_virtual_tokens is None or config.token_dim is None:
        raise ConfigError(f"config: expected num_virtual_tokens and token_dim, got {config.num_virtual_tokens} "
                          f"and {config.token_dim}")
    T, D = config.total_virtual_tokens, config.token_dim
    shapes: dict[str, tuple[int, ...]] = {"embedding.weight": (T, D)}
    if isinstance(config, MultitaskPromptTuningConfig):
        K, R = config.num_tasks, config.num_ranks
        return {"prefix_task_cols": (K, T, R), "prefix_task_rows": (K, R, D), **shapes}
    if not isinstance(config, PromptEncoderConfig):
        return shapes
    table_only = config.inference_mode if full_encoder is None else not full_encoder
    if table_only:
        return shapes
    H = config.encoder_hidden_size or D
    if config.encoder_reparameterization_type == PromptEncoderReparameterizationType.LSTM:
        for k in range(config.encoder_num_layers):
            width = D if k == 0 else 2 * H
            for suffix in ("", "_reverse"):
                shapes[f"lstm_head.weight_ih_l{k}{suffix}"] = (4 * H, width)
                shapes[f"lstm_head.weight_hh_l{k}{suffix}"] = (4 * H, H)
                shapes[f"lstm_head.bias_ih_l{k}{suffix}"] = (4 * H,)
                shapes[f"lstm_head.bias_hh_l{k}{suffix}"] = (4 * H,)
        widths = (2 * H, 2 * H, D)
    else:
        widths = (D, H, H, D)
    for j, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        shapes[f"mlp_head.{2 * j}.weight"] = (fan_out, fan_in)
        shapes[f"mlp_head.{2 * j}.bias"] = (fan_out,)
    return shapes


def _cap_model(config: PromptLearningConfig) -> None:
    """Refuse a module of more than MAX_MODEL_ELEMENTS elements in all: the parameters it would allocate
    (a P-tuning config in inference mode holds the prompt table only, as PEFT's saved configs say; the
    same config built with its encoder is capped again then)."""
    if config.num_virtual_tokens is None or config.token_dim is None:
        return
    total = sum(_numel(s) for s in parameter_shapes(config).values())
    if total > MAX_MODEL_ELEMENTS:
        raise ConfigError(f"config: expected at most {MAX_MODEL_ELEMENTS} parameter elements in all, got {total} "
                          f"(num_virtual_tokens={config.num_virtual_tokens}, token_dim={config.token_dim})")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def check_state_shapes(config: PromptLearningConfig, state: dict[str, Any], where: str) -> None:
    """The shapes of ``state`` (arrays, or anything with a ``shape``) against the module ``config``
    describes, before that module (and its init) is allocated: a config asking for 46000 x 46000 beside a
    (3, 4) table costs nothing. Only the keys both have are compared; strict loading checks the rest."""
    for key, shape in parameter_shapes(config, full_encoder=True).items():
        if key in state and tuple(state[key].shape) != shape:
            raise CheckpointError(f"{where}: {key!r}: expected shape {shape} (from the config), got "
                                  f"{tuple(state[key].shape)}")


def _read_json(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_NAME
    if not path.exists() and not path.is_symlink():
        raise ConfigError(f"config path: expected an {CONFIG_NAME} file, got missing path {path}")
    raw = read_regular_file(path, MAX_CONFIG_BYTES, ConfigError, CONFIG_NAME)  # no FIFO, device, huge file
    return _parse_json(raw, path)


def _parse_json(raw: bytes, path: str | os.PathLike) -> dict[str, Any]:
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: expected at most {MAX_CONFIG_BYTES} bytes of config, got {len(raw)}")
    try:  # ValueError: also an integer of more digits than Python converts (a 5001-digit token_dim)
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{path}: expected JSON, got unreadable text ({exc_text(exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if "runtime_config" in data:
        warnings.warn(f"{path}: dropping 'runtime_config' (PEFT drops it as well)")
        data.pop("runtime_config")
    return data


@dataclasses.dataclass(kw_only=True)
class PromptTuningConfig(PromptLearningConfig):
    """PEFT's ``PromptTuningConfig`` (peft_type PROMPT_TUNING)."""

    PEFT_TYPE: ClassVar[PeftType] = PeftType.PROMPT_TUNING
    INIT_ENUMS: ClassVar[tuple[type[enum.Enum], ...]] = (PromptTuningInit,)

    prompt_tuning_init: PromptTuningInit | str = PromptTuningInit.RANDOM
    prompt_tuning_init_text: str | None = None
    tokenizer_name_or_path: str | None = None
    tokenizer_kwargs: dict | None = None

    def _validate(self) -> None:
        super()._validate()
        self.prompt_tuning_init = _enum("prompt_tuning_init", self.prompt_tuning_init, self.INIT_ENUMS)
        is_text = self.prompt_tuning_init.value == "TEXT"
        if is_text and not self.tokenizer_name_or_path:
            raise ConfigError(
                f"When prompt_tuning_init='TEXT', tokenizer_name_or_path can't be {self.tokenizer_name_or_path}."
            )
        if is_text and self.prompt_tuning_init_text is None:
            raise ConfigError("When prompt_tuning_init='TEXT', prompt_tuning_init_text can't be None.")
        if self.tokenizer_kwargs and not is_text:
            raise ConfigError(
                "tokenizer_kwargs only valid when using prompt_tuning_init='TEXT', "
                f"got prompt_tuning_init={self.prompt_tuning_init.value!r}"
            )


@dataclasses.dataclass(kw_only=True)
class MultitaskPromptTuningConfig(PromptTuningConfig):
    """PEFT's ``MultitaskPromptTuningConfig`` (peft_type MULTITASK_PROMPT_TUNING).

    ``prompt_tuning_init`` also accepts the plain string "SAMPLE_VOCAB", which PEFT honours through the
    PromptEmbedding parent although it is not a MultitaskPromptTuningInit member.
    """

    PEFT_TYPE: ClassVar[PeftType] = PeftType.MULTITASK_PROMPT_TUNING
    INIT_ENUMS: ClassVar[tuple[type[enum.Enum], ...]] = (MultitaskPromptTuningInit, PromptTuningInit)

    prompt_tuning_init: MultitaskPromptTuningInit | str = MultitaskPromptTuningInit.RANDOM
    prompt_tuning_init_state_dict_path: str | None = None
    prompt_tuning_init_task: int | None = 0
    num_ranks: int | None = 1
    num_tasks: int | None = 1

    def _validate(self) -> None:
        super()._validate()
        self.num_ranks = _size("num_ranks", self.num_ranks)
        self.num_tasks = _size("num_tasks", self.num_tasks)
        self.prompt_tuning_init_task = _size("prompt_tuning_init_task", self.prompt_tuning_init_task, minimum=0)
        if self.num_virtual_tokens is not None and self.token_dim is not None:
            _cap("num_tasks x total virtual tokens x num_ranks", self.num_tasks, self.total_virtual_tokens, self.num_ranks)
            _cap("num_tasks x num_ranks x token_dim", self.num_tasks, self.num_ranks, self.token_dim)
        if self.prompt_tuning_init in SOURCE_INITS and self.prompt_tuning_init_state_dict_path is None:
            raise ConfigError(
                "prompt_tuning_init_state_dict_path needs to be specified with "
                f"{self.prompt_tuning_init.value} init method"
            )
        single = (MultitaskPromptTuningInit.AVERAGE_SOURCE_TASKS, MultitaskPromptTuningInit.EXACT_SOURCE_TASK)
        if self.prompt_tuning_init in single and self.num_tasks != 1:
            raise ConfigError(
                f"num_tasks: {self.prompt_tuning_init.value} initialises exactly one target task (PEFT "
                "strictly loads (1, T, R) / (1, R, D) task factors), so num_tasks must be 1, "
                f"got {self.num_tasks}"
            )


@dataclasses.dataclass(kw_only=True)
class PromptEncoderConfig(PromptLearningConfig):
    """PEFT's ``PromptEncoderConfig`` (peft_type P_TUNING)."""

    PEFT_TYPE: ClassVar[PeftType] = PeftType.P_TUNING

    encoder_reparameterization_type: PromptEncoderReparameterizationType | str = (
        PromptEncoderReparameterizationType.MLP
    )
    encoder_hidden_size: int | None = None
    encoder_num_layers: int = 2
    encoder_dropout: float = 0.0

    def _validate(self) -> None:
        super()._validate()
        try:
            self.encoder_reparameterization_type = PromptEncoderReparameterizationType(
                getattr(self.encoder_reparameterization_type, "value", self.encoder_reparameterization_type)
            )
        except ValueError:
            raise ConfigError(
                "encoder_reparameterization_type: Prompt encoder type not recognized. Please use one of "
                f"MLP (recommended) or LSTM; got {self.encoder_reparameterization_type!r}"
            ) from None
        self.encoder_hidden_size = _optional_int("encoder_hidden_size", self.encoder_hidden_size)
        self.encoder_num_layers = _size("encoder_num_layers", self.encoder_num_layers, maximum=MAX_LAYERS)
        p = self.encoder_dropout
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
            raise ConfigError(f"encoder_dropout: expected a float in [0, 1), got {p!r}")
        self.encoder_dropout = float(p)
        if self.token_dim is not None:
            hidden = self.encoder_hidden_size or self.token_dim
            _cap("4 x encoder_hidden_size x max(token_dim, 2 x encoder_hidden_size) (the encoder weights)",
                 4, hidden, max(self.token_dim, 2 * hidden))


CONFIG_CLASSES: dict[PeftType, type[PromptLearningConfig]] = {
    PeftType.PROMPT_TUNING: PromptTuningConfig,
    PeftType.MULTITASK_PROMPT_TUNING: MultitaskPromptTuningConfig,
    PeftType.P_TUNING: PromptEncoderConfig,
}


def config_from_dict(data: dict[str, Any]) -> PromptLearningConfig:
    """Pick the config class from ``data['peft_type']`` (as PEFT's PeftConfig does)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a dict, got {type(data).__name__}")
    peft_type = _enum("peft_type", data.get("peft_type"), PeftType)
    return CONFIG_CLASSES[peft_type].from_dict(data)


def load_config(path: str | os.PathLike) -> PromptLearningConfig:
    """Read any of the three configs from an ``adapter_config.json`` or its directory."""
    return config_from_dict(_read_json(path))


def config_from_json(raw: bytes, path: str | os.PathLike = CONFIG_NAME) -> PromptLearningConfig:
    """Any of the three configs from the bytes of an ``adapter_config.json`` (``path`` names it in errors)."""
    return config_from_dict(_parse_json(raw, path))
