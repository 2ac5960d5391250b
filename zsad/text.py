"""Text embeddings of prompt ensembles and their class prototypes.

Context length
--------------
CLIP's text tower is causal and pools the end-of-text (EOT) position, so the padding after a prompt's EOT never
reaches the embedding: running a batch through only as many positions as its longest prompt needs (``context=
"trim"``) computes the same embeddings as all 77 positions (``context="full"``) with a fraction of the work (prompts
are 10-25 tokens): 3.3-7x faster on ViT-B-16-plus-240 (``benchmarks/bench_text_context.py``). "The same" holds up
to float rounding only: the matrix products have other row counts and the attention softmax sums fewer (exactly
zero) terms, which moves an embedding value by up to 1.3e-7 (ViT-B, normalised; 3.9e-7 on the tiny model) and
FADE's language-only image scores by up to 2.7e-7 (4.8e-7 tiny). No cut is bit-exact in general: which rows round
differently depends on the batch's row count and where each EOT falls in the kernels' blocks (cuts to 32 or 64
positions were tried). ``"full"`` therefore stays the default, the computation the official FADE code runs (zsad's
FADE matches it to 5e-7); trimming is an explicit opt-in for prompt sets no official output is compared with, and
the feature cache keys the two apart.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# FADE encodes text through GEM's wrapper, which puts every prompt inside this template before tokenising
# (``GEMWrapper.encode_text`` in github.com/WalBouss/GEM, gem/gem_wrapper.py, which FADE's utils/embeddings.py calls;
# book/methods.md, "Details the papers do not state"), e.g. "a photo of a a cropped photo of the damaged bottle."
# Kept to reproduce its numbers.
FADE_WRAPPER = "a photo of a {}."
#: ``encode_prompts(context=...)``: every position of the tokenizer's context, or each batch cut after its longest
#: prompt's end-of-text token.
CONTEXTS = ("full", "trim")


def _text_module(model):
    """``(module, tokenizer or None)`` of an open_clip model or a :class:`zsad.backbone.LoadedModel`."""
    if not isinstance(model, torch.nn.Module) and isinstance(getattr(model, "model", None), torch.nn.Module):
        return model.model, model.tokenizer
    return model, None


def check_trimmable(model) -> None:
    """Raise ``ValueError`` unless ``model``'s text tower gives the same embeddings with a shorter context.

    Parameters
    ----------
    model : torch.nn.Module or zsad.backbone.LoadedModel
        An open_clip ``CLIP`` (the text tower on the model itself, as every architecture of this study has).

    Raises
    ------
    ValueError
        The tower is not causal (a padding token would reach the pooled position) or does not pool the end-of-text
        token, or its layout is not open_clip's ``CLIP`` text tower (``CustomTextCLIP``, Hugging Face towers).
    """
    module, _ = _text_module(model)
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask", "text_pool_type")
    missing = [a for a in needed if not hasattr(module, a)]
    if missing:
        raise ValueError(f"context='trim' needs an open_clip CLIP text tower; {type(module).__name__} lacks "
                         f"{', '.join(missing)}: use context='full'")
    if module.attn_mask is None:
        raise ValueError("context='trim' needs a causal text tower (attn_mask is None: padding would reach the "
                         "pooled token): use context='full'")
    if module.text_pool_type not in ("argmax", "eos"):
        raise ValueError(f"context='trim' needs end-of-text pooling, this tower pools {module.text_pool_type!r}: "
                         "use context='full'")


def _eot_index(module, tokens: torch.Tensor) -> torch.Tensor:
    """Position of each row's pooled (end-of-text) token, as open_clip's ``text_global_pool`` finds it."""
    if module.text_pool_type == "argmax":
        return tokens.argmax(dim=-1)  # the EOT token has the largest id of the vocabulary
    return (tokens == module.text_eos_id).int().argmax(dim=-1)


def encode_tokens_trimmed(module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text`` on ``tokens`` cut after the batch's last end-of-text position.

    Parameters
    ----------
    module : open_clip.model.CLIP
        A model that passed :func:`check_trimmable`.
    tokens : torch.Tensor
        (B, C) token ids from the model's tokenizer (C = its context length, 77).

    Returns
    -------
    torch.Tensor
        (B, D) projected, unnormalised text embeddings (the tower's dtype).
    """
    length = int(_eot_index(module, tokens).max()) + 1
    tokens = tokens[:, :length]
    cast = module.transformer.get_cast_dtype()
    x = module.token_embedding(tokens).to(cast) + module.positional_embedding[:length].to(cast)
    # the causal mask of the first `length` positions: what each of them attends to is unchanged
    x = module.ln_final(module.transformer(x, attn_mask=module.attn_mask[:length, :length]))
    x = x[torch.arange(x.shape[0], device=x.device), _eot_index(module, tokens)]
    proj = module.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


@torch.inference_mode()
def encode_prompts(model, tokenizer, prompts: Sequence[str], *, wrapper: str | None = FADE_WRAPPER,
                   normalise: bool = True, batch_size: int = 128, context: str = "full") -> torch.Tensor:
    """Encode prompts with the CLIP text tower.

    Parameters
    ----------
    model : torch.nn.Module or zsad.backbone.LoadedModel
        An open_clip model, or what :func:`zsad.load_model` returns (then ``tokenizer`` may be None: the model's own
        is used).
    tokenizer : callable or None
        open_clip tokenizer: list of str -> (B, 77) token ids.
    prompts : sequence of str
        The prompts, in the order of the rows returned.
    wrapper : str or None
        Template each prompt is put in before tokenising (FADE's, by default); None: the prompt as it is.
    normalise : bool
        L2-normalise every embedding.
    batch_size : int
        Prompts per forward pass.
    context : {"full", "trim"}
        ``"full"``: every position of the tokenizer's context (open_clip's ``encode_text``, what the official code
        runs). ``"trim"``: prompts are batched by token length (longest first) and each batch runs only up to its
        longest prompt's end-of-text token: the same embeddings up to float rounding, several times faster.

    Returns
    -------
    torch.Tensor
        (P, D) float32 embeddings, one row per prompt in the order given.
    """
    module, own = _text_module(model)
    tokenizer = tokenizer if tokenizer is not None else own
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
    if not prompts:
        raise ValueError("no prompts to encode")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if context == "trim":
        check_trimmable(module)
    texts = [wrapper.format(p) if wrapper else p for p in prompts]
    device = next(module.parameters()).device
    if context == "full":
        out = []
        for i in range(0, len(texts), batch_size):
            emb = module.encode_text(tokenizer(texts[i:i + batch_size]).to(device)).float()
            out.append(F.normalize(emb, dim=-1) if normalise else emb)
        return torch.cat(out)
    tokens = tokenizer(texts)
    # longest first, ties in input order: batches of similar lengths pad little, and the order is deterministic
    ends = _eot_index(module, tokens).tolist()
    order = sorted(range(len(texts)), key=lambda i: (-ends[i], i))
    emb = torch.empty(0)
    for start in range(0, len(order), batch_size):
        rows = torch.tensor(order[start:start + batch_size])
        part = encode_tokens_trimmed(module, tokens[rows].to(device)).float()
        part = F.normalize(part, dim=-1) if normalise else part
        if emb.numel() == 0:
            emb = torch.empty(len(texts), part.shape[1], dtype=part.dtype, device=part.device)
        emb[rows.to(part.device)] = part
    return emb


def prototypes(normal: torch.Tensor, abnormal: torch.Tensor, *, renormalise: bool = False) -> torch.Tensor:
    """(2, D) class prototypes ``[normal, abnormal]``: the mean embedding of each side.

    FADE averages L2-normalised embeddings and does not re-normalise the mean (``renormalise=False``, its default
    text model); re-normalising changes the softmax scale and so the scores.

    Parameters
    ----------
    normal, abnormal : torch.Tensor
        (P, D) embeddings of each side's prompts.
    renormalise : bool
        L2-normalise the two means.

    Returns
    -------
    torch.Tensor
        (2, D): the normal prototype, then the abnormal one.
    """
    proto = torch.stack([normal.mean(0), abnormal.mean(0)])
    return F.normalize(proto, dim=-1) if renormalise else proto
