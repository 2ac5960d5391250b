"""The study's per-class runner for Tamura 2023 (:mod:`zsad.methods.tamura`).

``tamura_class(loaded, cls, test, refs, params, progress)`` has the signature of the runners in
:data:`zsad.study.METHODS`. Config overrides come from ``params["options"]`` (a dict of :class:`TamuraConfig`
fields, e.g. ``{"object_word": "class"}``, ``{"n_random_words": 0}``); an unknown field is a ``ValueError``.

Steps: the prompt set (:func:`build_prompt_set`, object word "object" or the class name via
:func:`zsad.data.class_prompt_name`; vocabulary from ``loaded.tokenizer``), a check that no prompt exceeds the text
tower's context (open_clip's tokenizer would truncate silently), encoding of the distinct prompts with
:func:`zsad.text.encode_prompts` (L2-normalised), FFN training, then the test images' WinCLIP features
(:func:`zsad.windows.extract_window_tokens`, through ``params["cache"]`` when given) scored by
:func:`zsad.methods.tamura.score_windows`.

The method is zero-shot: reference images (``refs``) are not used; their count is recorded in ``info``.

The trained FFN is reused across the classes of a run when nothing it depends on changes (same model object, same
config, same object word, which is the case for every class with ``object_word="object"``): it is memoised per
model object (a weak reference, so nothing outlives the model). Training is deterministic, so reuse gives the same
numbers as retraining; ``info["training"]["reused"]`` says which happened. A model whose weights are changed in
place after a run would need :func:`clear_memo`.
"""
from __future__ import annotations

import time
import weakref
from dataclasses import asdict, fields

import torch

from zsad.methods.base import MethodOutput
from zsad.methods.tamura import (
    TamuraConfig,
    build_prompt_set,
    excluded_words,
    ffn_probability,
    score_windows,
    train_ffn,
    vocabulary_words,
)

__all__ = ["tamura_class", "tamura_config", "prepare_detector", "clear_memo"]

_MEMO: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def tamura_config(options: dict | None) -> TamuraConfig:
    """:class:`TamuraConfig` from an options dict; unknown fields and bad values are ``ValueError``s."""
    options = dict(options or {})
    known = {f.name for f in fields(TamuraConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"bad Tamura option(s) {unknown}; known: {sorted(known)}")
    return TamuraConfig(**options).validated()


def clear_memo() -> None:
    """Forget every memoised FFN."""
    _MEMO.clear()


def _context_length(tokenizer) -> int:
    return int(getattr(tokenizer, "context_length", 77))


def _check_lengths(tokenizer, texts) -> int:
    """The longest prompt in tokens (incl. start/end); raise if one would be truncated."""
    enc = getattr(tokenizer, "encode", None)
    if enc is None:
        return -1
    longest = max(len(enc(t)) + 2 for t in texts)
    if longest > _context_length(tokenizer):
        raise ValueError(f"a generated prompt has {longest} tokens, more than the text context "
                         f"{_context_length(tokenizer)}: use fewer or shorter random words")
    return longest


def prepare_detector(loaded, cfg: TamuraConfig, object_name: str, cache=None):
    """Build the prompt set, encode it (through the feature cache when given) and train the FFN: ``(net, info)``
    (memoised, see the module docstring)."""
    from zsad.cache import encode_prompts_cached

    key = (cfg, object_name)
    memo = _MEMO.setdefault(loaded.model, {})
    if key in memo:
        net, info = memo[key]
        return net, {**info, "training": {**info["training"], "reused": True}}
    t0 = time.perf_counter()
    vocab = None
    if cfg.word_source == "vocab" and cfg.n_random_words > 0:
        vocab = vocabulary_words(loaded.tokenizer, cfg.word_min_len, cfg.word_max_len,
                                 excluded_words() if cfg.exclude_state_words else ())
    ps = build_prompt_set(cfg, object_name, vocab)
    texts, inverse = ps.unique()
    wrapped = [cfg.wrapper.format(t) for t in texts] if cfg.wrapper else texts
    longest = _check_lengths(loaded.tokenizer, wrapped)
    emb = encode_prompts_cached(loaded, texts, cache=cache, wrapper=cfg.wrapper, normalise=True).cpu()
    t_encode = time.perf_counter() - t0
    net, history = train_ffn(emb[torch.from_numpy(inverse)], ps.labels, cfg)
    examples = {side: [ps.texts[i] for i in range(len(ps)) if ps.labels[i] == label][:5]
                for label, side in enumerate(("normal", "abnormal"))}
    info = {"prompts": {**ps.info, "n_samples": len(ps), "n_unique": len(texts), "longest_tokens": longest,
                        "examples": examples, "encode_seconds": t_encode},
            "training": {**history, "reused": False}}
    memo[key] = (net, info)
    return net, info


def tamura_class(loaded, cls, test, refs, params, progress) -> MethodOutput:
    """Tamura 2023 on one class: train on generated text embeddings, score the test images (AC and AS)."""
    from zsad.data import class_prompt_name
    from zsad.windows import extract_window_tokens

    cfg = params.get("config") or tamura_config(params.get("options"))
    object_name = "object" if cfg.object_word == "object" else class_prompt_name(cls)
    net, info = prepare_detector(loaded, cfg, object_name, params.get("cache"))
    windows = extract_window_tokens(loaded, test, scales=cfg.scales, progress=progress,
                                    desc=f"{cls} test", cache=params.get("cache"), autocast=params.get("autocast"))
    out = score_windows(windows, lambda e: ffn_probability(net, e, cfg.temperature), cfg)
    out.info.update({**asdict(cfg), "scales": list(cfg.scales), **info, "references_ignored": len(refs or [])})
    return out
