"""Shared by the engine tests (tests/test_vllm_serve.py, tests/test_ortgenai_serve.py): a tiny random Llama
saved with a word-level tokenizer, PEFT adapters of every type with their parameters drawn at scale (a fresh
MPT prompt is ~4e-4 of E, too small to steer anything), the requests, PeftModel.generate as the reference,
and the judgment of an engine's greedy tokens and logits against it."""

from __future__ import annotations

import warnings

import numpy as np

from mpt_ref.interop.adapter import load_peft_adapter
from mpt_ref.serve.prompt_table import prompt_table
from mpt_ref.tolerances import ENGINE_LOGITS_F32

V, D, N, K = 512, 256, 8, 3
KINDS = ("prompt_tuning", "mpt", "p_tuning_mlp", "p_tuning_lstm")
NEW_TOKENS = 8


def _config(peft, kind):
    common = {"task_type": "CAUSAL_LM", "num_virtual_tokens": N}
    if kind == "prompt_tuning":
        return peft.PromptTuningConfig(**common)
    if kind == "mpt":
        return peft.MultitaskPromptTuningConfig(num_tasks=K, num_ranks=2, **common)
    return peft.PromptEncoderConfig(encoder_hidden_size=64, encoder_reparameterization_type=kind.split("_")[-1].upper(),
                                    **common)


def make_setup(root, torch, peft, transformers, *, tokenizer=False):
    """(base dir, {kind: (adapter dir, reloaded PeftModel)}, [(kind, task, ids)])."""
    torch.manual_seed(0)
    # intermediate_size != vocab_size: onnxruntime-genai's builder takes any Linear of the vocabulary's width
    # for the LM head
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=384, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   bos_token_id=1, eos_token_id=2)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(root / "base"))
    if tokenizer:
        import tokenizers

        tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({f"t{i}": i for i in range(V)}, unk_token="t0"))
        tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
        transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", bos_token="t1",
                                             eos_token="t2").save_pretrained(str(root / "base"))
    adapters = {}
    for i, kind in enumerate(KINDS):
        torch.manual_seed(10 + i)
        model = peft.get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(str(root / "base")),
                                    _config(peft, kind))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad:
                    p.copy_(torch.randn_like(p) * (0.5 if "prefix_task" not in name else 1.0))
        model.save_pretrained(str(root / kind))
        reloaded = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(str(root / "base")),
                                                  str(root / kind)).eval()
        adapters[kind] = (root / kind, reloaded)
    rng = np.random.default_rng(0)
    requests = []
    for kind in KINDS:
        for task in range(K if kind == "mpt" else 2):  # PT / P-tuning: two requests, task 0
            requests.append((kind, task if kind == "mpt" else 0, rng.integers(3, V, size=int(rng.integers(4, 9)))))
    return root / "base", adapters, requests


def tables(adapters):
    out = {}
    for kind, (directory, _) in adapters.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[kind] = prompt_table(load_peft_adapter(directory))
    return out


def peft_reference(torch, adapters, requests):
    """PeftModel.generate per request: (tokens, per-step logits (NEW_TOKENS, V) float64)."""
    out = []
    for kind, task, ids in requests:
        model = adapters[kind][1]
        kwargs = {"task_ids": torch.tensor([task])} if kind == "mpt" else {}
        with torch.no_grad():
            gen = model.generate(input_ids=torch.tensor(ids[None]),
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.int64),
                                 max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True, **kwargs)
        out.append((gen.sequences[0, -NEW_TOKENS:].tolist(), torch.stack(gen.logits)[:, 0].numpy().astype(np.float64)))
    return out


def judge(results, engine, requests, reference, got, *, skip=()):
    """got: per request (tokens, [{token id: logit} per step]). Greedy tokens must equal PEFT's unless PEFT's own
    top-2 margin is within 2·tol (a near-tie; that request's comparison stops there); logits within
    ENGINE_LOGITS_F32 (scaled by max |PEFT logits| of the request). ``skip``: token ids whose logits the engine
    masks (e.g. EOS under min_length). Records (agree, total, max |diff|, max |diff| / s) per kind."""
    for (kind, task, _), (want_tokens, want_logits), (tokens, steps) in zip(requests, reference, got):
        r = results.setdefault((engine, kind), [0, 0, 0.0, 0.0])
        scale = float(np.abs(want_logits).max())
        tol = ENGINE_LOGITS_F32.atol * scale
        for j, (a, b) in enumerate(zip(tokens, want_tokens)):
            diffs = [abs(v - want_logits[j, t]) for t, v in steps[j].items() if t not in skip]
            r[2] = max(r[2], max(diffs))
            r[3] = max(r[3], max(diffs) / scale)
            assert max(diffs) <= tol, f"{engine} {kind} task {task} step {j}: |logit diff| {max(diffs):.3g} > {tol:.3g}"
            r[1] += 1
            if a == b:
                r[0] += 1
                continue
            top2 = np.sort(want_logits[j])[-2:]
            assert top2[1] - top2[0] <= 2 * tol, (f"{engine} {kind} task {task} step {j}: token {a} != PEFT's {b} "
                                                  f"with PEFT's margin {top2[1] - top2[0]:.3g} > 2·{tol:.3g}")
            break


def print_results(results):
    for (engine, kind), (agree, total, diff, rel) in sorted(results.items()):
        print(f"\n{engine:<13} {kind:<14} greedy {agree}/{total}  max |logit diff| {diff:.3g} = {rel:.3g} s")
