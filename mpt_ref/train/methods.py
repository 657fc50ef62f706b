"""The methods compared on a target task: how each builds its trainable module from the source stage.

Every method then trains the same way (full-batch Adam on the target's few shots, its learning rate
chosen on the dev targets from its grid). A method that must pick one source task (PT best teacher,
MPT EXACT_SOURCE_TASK) picks it by accuracy on the target's training shots only, never the test set.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

from mpt_ref.modules.config import MultitaskPromptTuningConfig, PromptEncoderConfig, PromptTuningConfig
from mpt_ref.modules.multitask import MultitaskPromptEmbedding
from mpt_ref.modules.prompt_embedding import PromptEmbedding
from mpt_ref.modules.prompt_encoder import PromptEncoder
from mpt_ref.train.base_model import BaseModel
from mpt_ref.train.loop import Batch, accuracy, step_loss
from mpt_ref.train.source import SourceStage, mpt_config, prompt_config, with_shared_prompt


class Context(NamedTuple):
    s: Any                 # Settings
    model: BaseModel
    source: SourceStage
    shots: Batch           # the target's training set (task 0)
    seed: int


class Method(NamedTuple):
    name: str
    grid: str              # which learning-rate grid of Settings.lr_grids
    build: Callable[[Context], Any]
    about: str


def _best(ctx: Context, candidates: list[Callable[[], Any]]) -> int:
    """Index of the candidate with the best training-shot accuracy (ties: lower training loss)."""
    score = [(accuracy(ctx.model, c(), ctx.shots), -step_loss(ctx.model, c(), ctx.shots)[0]) for c in candidates]
    return max(range(len(score)), key=lambda i: score[i])


def _table(ctx: Context, table: np.ndarray) -> PromptEmbedding:
    module = PromptEmbedding(prompt_config(ctx.s), seed=ctx.seed, dtype=np.float64)
    module.load_state_dict({"embedding.weight": table})
    return module


def _pt_random(ctx: Context) -> PromptEmbedding:
    return PromptEmbedding(prompt_config(ctx.s), seed=ctx.seed, dtype=np.float64)


def _pt_vocab(ctx: Context) -> PromptEmbedding:
    config = PromptTuningConfig(num_virtual_tokens=ctx.s.tokens, token_dim=ctx.s.dim, prompt_tuning_init="SAMPLE_VOCAB")
    return PromptEmbedding(config, ctx.model.tok, seed=ctx.seed, dtype=np.float64)


def _pt_mean(ctx: Context) -> PromptEmbedding:
    return _table(ctx, np.mean([t.state_dict()["embedding.weight"] for t in ctx.source.teachers], axis=0))


def _pt_best_teacher(ctx: Context) -> PromptEmbedding:
    tables = [t.state_dict()["embedding.weight"] for t in ctx.source.teachers]
    return _table(ctx, tables[_best(ctx, [lambda w=w: _table(ctx, w) for w in tables])])


def _pt_multitask(ctx: Context) -> PromptEmbedding:
    return _table(ctx, ctx.source.multitask.state_dict()["embedding.weight"])


def _shared(student: MultitaskPromptEmbedding) -> Callable[[Context], MultitaskPromptEmbedding]:
    def build(ctx: Context) -> MultitaskPromptEmbedding:
        module = MultitaskPromptEmbedding(mpt_config(ctx.s, 1), seed=ctx.seed, dtype=np.float64)
        return with_shared_prompt(module, student.state_dict()["embedding.weight"])
    return build


def _peft_init(init: str) -> Callable[[Context], MultitaskPromptEmbedding]:
    def build(ctx: Context) -> MultitaskPromptEmbedding:
        config = lambda task: MultitaskPromptTuningConfig(  # noqa: E731
            num_virtual_tokens=ctx.s.tokens, token_dim=ctx.s.dim, num_ranks=1, prompt_tuning_init=init,
            prompt_tuning_init_state_dict_path=str(ctx.source.checkpoint), prompt_tuning_init_task=task)
        make = lambda task: MultitaskPromptEmbedding(config(task), seed=ctx.seed, dtype=np.float64)  # noqa: E731
        task = 0
        if init == "EXACT_SOURCE_TASK":
            task = _best(ctx, [lambda k=k: make(k) for k in range(len(ctx.source.teachers))])
        return make(task)
    return build


def _encoder(kind: str) -> Callable[[Context], PromptEncoder]:
    def build(ctx: Context) -> PromptEncoder:
        config = PromptEncoderConfig(num_virtual_tokens=ctx.s.tokens, token_dim=ctx.s.dim,
                                     encoder_hidden_size=ctx.s.dim, encoder_reparameterization_type=kind)
        return PromptEncoder(config, seed=ctx.seed, dtype=np.float64).eval()
    return build


METHODS = (
    Method("PT random", "scratch", _pt_random, "prompt tuning from PEFT's RANDOM init, E ~ N(0, 1)"),
    Method("PT vocab init", "scratch", _pt_vocab, "prompt tuning from SAMPLE_VOCAB: E = rows of the base model's "
                                                  "token table"),
    Method("PT mean of teachers", "transfer", _pt_mean, "prompt tuning from the mean of the teacher prompts"),
    Method("PT best teacher", "transfer", _pt_best_teacher, "prompt tuning from the teacher that scores best on "
                                                            "the training shots"),
    Method("PT multitask prompt", "transfer", _pt_multitask, "prompt tuning from one prompt trained on all sources"),
    Method("MPT", "transfer", lambda ctx: _shared(ctx.source.mpt)(ctx),
           "the paper's adaptation: E = P* from the distilled source stage, rank-1 factors from 1, all trained"),
    Method("MPT no distillation", "transfer", lambda ctx: _shared(ctx.source.mpt_plain)(ctx),
           "the same from a source stage without distillation (the paper's ablation)"),
    Method("MPT AVERAGE_SOURCE_TASKS", "transfer", _peft_init("AVERAGE_SOURCE_TASKS"),
           "PEFT init: E = P*, factors = mean of the source cols times mean of the source rows"),
    Method("MPT EXACT_SOURCE_TASK", "transfer", _peft_init("EXACT_SOURCE_TASK"),
           "PEFT init: E = P*, factors of the source task that scores best on the training shots"),
    Method("MPT ONLY_SOURCE_SHARED", "scratch", _peft_init("ONLY_SOURCE_SHARED"),
           "PEFT init: E = P*, factors from PEFT's N(0, 0.02^2) (the prompt starts ~4e-4 x P*, so it gets the "
           "from-scratch grid)"),
    Method("P-tuning MLP", "encoder", _encoder("MLP"), "P-tuning, MLP reparameterization, H = D, random init"),
    Method("P-tuning LSTM", "encoder", _encoder("LSTM"), "P-tuning, LSTM reparameterization, H = D, random init"),
)
