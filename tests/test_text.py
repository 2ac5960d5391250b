"""Text embeddings: a context trimmed to each batch's longest prompt gives the full-context embeddings."""
import copy

import pytest
import torch

from zsad.backbone import load_model
from zsad.prompts import winclip_prompts
from zsad.text import FADE_WRAPPER, check_trimmable, encode_prompts, encode_tokens_trimmed, prototypes

pytestmark = pytest.mark.usefixtures("single_thread")

# lengths from 6 to 77 tokens (the last is cut by the tokenizer), in an order that is not sorted by length
PROMPTS = ["a photo of a flawless bottle",
           "scratch " * 90,
           "a cropped photo of the damaged object with a long crack running across its whole surface",
           "bad",
           "a close-up photo of a broken metal nut.",
           "bad"]


@pytest.fixture(scope="module")
def loaded():
    return load_model("zsad-tiny-vit", seed=0)


def test_trimmed_equals_full_context(loaded, tiny):
    """Every embedding within 1e-5 of open_clip's full-context encode_text, rows in the order given, over several
    batches of unequal lengths, with and without the wrapper and the normalisation."""
    texts = PROMPTS + winclip_prompts("bottle")["abnormal"][:20]
    for model, tok in ((loaded, None), (tiny, loaded.tokenizer)):  # tiny: random LayerNorm affines
        for wrapper, normalise in ((FADE_WRAPPER, True), (None, False)):
            full = encode_prompts(model, tok, texts, wrapper=wrapper, normalise=normalise, context="full")
            trim = encode_prompts(model, tok, texts, wrapper=wrapper, normalise=normalise, context="trim",
                                  batch_size=4)
            assert trim.shape == full.shape and trim.dtype == torch.float32
            assert (trim - full).abs().max() < 1e-5
    # the reference is open_clip itself, one prompt at a time
    raw = loaded.model.encode_text(loaded.tokenizer([PROMPTS[3]]))
    assert (encode_prompts(loaded, None, [PROMPTS[3]], wrapper=None, normalise=False, context="trim")
            - raw).abs().max() < 1e-5


def test_trim_cuts_the_context_and_a_full_length_prompt_is_bit_identical(loaded):
    """A batch runs through its longest prompt's positions only; at 77 tokens the computation is encode_text's."""
    tokens = loaded.tokenizer(["bad", "a photo of a flawless bottle"])
    seen = []
    hook = loaded.model.transformer.register_forward_pre_hook(lambda mod, args, kw: seen.append(args[0].shape[1]),
                                                              with_kwargs=True)
    try:
        encode_tokens_trimmed(loaded.model, tokens)
    finally:
        hook.remove()
    assert seen == [int(tokens[1].argmax()) + 1] == [8]  # start, 6 words, end of text
    long = loaded.tokenizer([PROMPTS[1]])
    assert int(long.argmax()) == 76
    with torch.inference_mode():
        assert torch.equal(encode_tokens_trimmed(loaded.model, long), loaded.model.encode_text(long))


def test_trim_only_where_it_is_exact(loaded):
    """A tower without a causal mask or without end-of-text pooling is refused, naming the option."""
    with pytest.raises(ValueError, match="context must be one of"):
        encode_prompts(loaded, None, ["a"], context="short")
    with pytest.raises(ValueError, match="batch_size"):
        encode_prompts(loaded, None, ["a"], batch_size=0)
    model = copy.deepcopy(loaded.model)
    model.attn_mask = None
    with pytest.raises(ValueError, match="causal.*context='full'"):
        encode_prompts(model, loaded.tokenizer, ["a"], context="trim")
    model = copy.deepcopy(loaded.model)
    model.text_pool_type = "last"
    with pytest.raises(ValueError, match="end-of-text pooling.*'last'"):
        check_trimmable(model)
    with pytest.raises(ValueError, match="lacks token_embedding"):
        check_trimmable(torch.nn.Linear(2, 2))
    full = encode_prompts(model, loaded.tokenizer, ["a"], context="full")  # full context needs none of it
    assert full.shape == (1, 32)


def test_prototypes_are_side_means():
    normal, abnormal = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[3.0, 4.0]])
    assert torch.equal(prototypes(normal, abnormal), torch.tensor([[0.5, 0.5], [3.0, 4.0]]))
    assert torch.allclose(prototypes(normal, abnormal, renormalise=True),
                          torch.tensor([[2 ** -0.5, 2 ** -0.5], [0.6, 0.8]]))


@pytest.mark.slow
def test_trimmed_equals_full_context_at_paper_size():
    """ViT-B-16-plus-240's text tower (12 layers, width 640), random weights: within 1e-5."""
    vitb = load_model("ViT-B-16-plus-240", seed=0)
    full = encode_prompts(vitb, None, PROMPTS, context="full")
    trim = encode_prompts(vitb, None, PROMPTS, context="trim", batch_size=3)
    assert (trim - full).abs().max() < 1e-5
