"""Tamura 2023: random-word data augmentation with CLIP for zero-shot anomaly detection (BMVC 2023).

What the paper says (abstract, arXiv:2308.11119; no code has been released): CLIP's *text* encoder is used as a
data source. Typical prompts containing normal / anomaly words are encoded, with several randomly generated words
inserted into each prompt so that the encoder yields a diverse set of normal and anomalous embeddings; a small
feed-forward network (FFN) is trained on these labelled text embeddings and then applied to CLIP *image* embeddings,
giving a category-agnostic detector that needs no training images and no careful prompt ensembling. It builds on
WinCLIP's sliding windows.

The pipeline implemented here
-----------------------------
1. **Base prompts**: WinCLIP's compositional ensemble (:func:`zsad.prompts.winclip_prompts`: 7 normal / 4 abnormal
   state phrases x 22 templates = 154 / 88 prompts) around an object word, ``"object"`` (category-agnostic,
   ``object_word="object"``, default) or the dataset class name (``object_word="class"``).
2. **Random words** (:func:`draw_words`, :func:`insert_words`): for each of ``samples_per_side`` samples per side a
   base prompt is taken (the base prompts are cycled in a seeded shuffled order, so each appears equally often, +-1)
   and ``n_random_words`` random words are inserted into it.
3. **Text embeddings**: every sample is encoded by the CLIP text tower and L2-normalised (by the caller; see
   :mod:`zsad.runners`); labels normal 0 / anomaly 1.
4. **FFN** (:class:`TamuraNet`, :func:`train_ffn`): ``Linear(D, hidden) - ReLU - Linear(hidden, 1)``, BCE on the
   logit, Adam, a fixed number of epochs over seeded mini-batches; the loss per epoch is recorded.
5. **Scoring** (:func:`score_windows`): anomaly probability ``p(e) = sigmoid(FFN(N(e)) / temperature)`` of an image
   embedding ``e``. AC: ``s_0 = p(CLS)``. AS exactly as WinCLIP's zero-shot map with ``p`` in place of the prompt
   softmax: per window scale s, ``M_s(patch) = |W_p| / sum_{w in W_p} 1/p(e_w)`` (harmonic aggregation over the
   windows covering the patch, :func:`zsad.methods.winclip.harmonic_aggregate`), then the harmonic mean of the
   image score broadcast and the scale maps, ``M = (1 + S) / (1/s_0 + sum_s 1/M_s)``; the 15x15 grid is bilinearly
   upsampled to ``map_size`` (240).

Decisions (the paper leaves these open; every one is a :class:`TamuraConfig` field, default in brackets)
--------------------------------------------------------------------------------------------------------------
- ``object_word`` ["object"]: the category-agnostic setting the paper argues for; ``"class"`` uses the class name
  (the "known object" setting), which the adapter resolves with :func:`zsad.data.class_prompt_name`.
- ``word_source`` ["vocab"]: words drawn uniformly from CLIP's BPE vocabulary, restricted to whole-word tokens
  (entries ending in ``</w>``) made only of 3-10 ASCII lower-case letters (``word_min_len``/``word_max_len``),
  30,293 entries for open_clip's tokenizer, minus the words that state normality or anomaly (``exclude_state_words``
  [True]: zsad.prompts' DEFECT_WORDS and NORMAL_WORDS and the words of the state phrases; 30,191 words remain), so
  that no random word contradicts the label. Each one is a single BPE token when encoded alone. Within one
  prompt the words are distinct (drawn without replacement). ``"letters"``: random strings of ``a-z``, lengths
  uniform in [word_min_len, word_max_len] (these split into several BPE tokens).
- ``n_random_words`` [3]: "several"; 0 gives the no-augmentation ablation (each sample is then a copy of a base
  prompt, so the training set is the base ensemble with equal weight per base prompt; duplicates are encoded once).
- ``insert_mode`` ["random"]: each word goes into a gap between the prompt's words (before the first and after the
  last included), chosen uniformly and independently; several words may share a gap, in draw order. ``"append"``
  puts them after the prompt, ``"prepend"`` before it. The inserted positions are recorded, and deleting the words
  at them gives back the base prompt (:func:`remove_inserted`).
- ``samples_per_side`` [1000]: 1000 normal + 1000 anomalous samples, balanced classes.
- ``wrapper`` [None]: prompts are encoded as they are (as WinCLIP; FADE's "a photo of a {}." is an option).
- FFN: ``hidden`` [128] (0 = a linear logistic regression), ``epochs`` [30], ``batch_size`` [64] (0 = full batch),
  ``lr`` [1e-3], ``weight_decay`` [0], Adam, ``BCEWithLogitsLoss``; parameter init is PyTorch's default Linear init
  drawn under ``torch.random.fork_rng`` seeded with ``seed`` [0], batches from a local ``torch.Generator`` seeded with
  ``seed`` (the global RNG is left untouched). Training runs on the CPU in float32 with ``train_threads`` [1] intra-op
  threads (restored afterwards): one thread is 5x faster than two for these small matmuls on a 2-core machine, and a
  fixed count makes the weights bit-identical for a seed whatever the caller's thread setting (on the same machine
  and torch build).
- prompt sampling uses ``numpy.random.default_rng(seed)``: normal side first, then the abnormal side; per sample the
  words are drawn, then their gaps.
- ``temperature`` [1.0]: divides the logit before the sigmoid (ranking of the image score is unaffected; the
  harmonic aggregations are, as with WinCLIP's tau).
- ``scales`` [(2, 3)], ``map_includes_image`` [True]: WinCLIP's zero-shot map (harmonic mean with the image score
  broadcast); False gives the harmonic mean of the window maps only. ``map_size`` [240].

Pure: no file I/O, no dataset knowledge.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zsad.methods.base import MethodOutput, resize_maps
from zsad.methods.tokens import WindowTokens, window_masks
from zsad.methods.winclip import harmonic_aggregate, harmonic_mean
from zsad.prompts import ABNORMAL_STATES, DEFECT_WORDS, NORMAL_STATES, NORMAL_WORDS, winclip_prompts

__all__ = ["TamuraConfig", "PromptSet", "TamuraNet", "OBJECT_WORDS", "WORD_SOURCES", "INSERT_MODES", "SIDES",
           "excluded_words", "vocabulary_words", "draw_words", "insert_words", "remove_inserted",
           "build_prompt_set", "build_net", "train_ffn", "ffn_probability", "aggregate_map", "score_windows",
           "tamura"]

OBJECT_WORDS = ("object", "class")
WORD_SOURCES = ("vocab", "letters")
INSERT_MODES = ("random", "append", "prepend")
SIDES = ("normal", "abnormal")  # label 0, label 1
_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


@dataclass(frozen=True)
class TamuraConfig:
    """Options of a Tamura run (decisions and defaults in the module docstring).

    Attributes
    ----------
    object_word : {"object", "class"}, default "object"
        "object" (category-agnostic) or "class" (the class name) as the prompts' object word.
    n_random_words : int, default 3
        Words inserted into every prompt; 0 = no augmentation.
    word_source : {"vocab", "letters"}, default "vocab"
        "vocab" (CLIP BPE whole words) or "letters" (random a-z strings).
    word_min_len : int, default 3
        Shortest random word, in letters.
    word_max_len : int, default 10
        Longest random word, in letters.
    exclude_state_words : bool, default True
        vocab: leave out words that say normal / anomalous (:func:`excluded_words`).
    insert_mode : {"random", "append", "prepend"}, default "random"
        Where the words go: random gaps, after or before the prompt.
    samples_per_side : int, default 1000
        Training prompts per side (normal, abnormal).
    wrapper : str, optional
        A template with one ``{}``, e.g. "a photo of a {}." (FADE); None = prompts as they are (WinCLIP).
    hidden : int, default 128
        FFN hidden width; 0 = linear.
    epochs : int, default 30
        Passes over the training set.
    batch_size : int, default 64
        Mini-batch size; 0 = full batch.
    lr : float, default 1e-3
        Adam learning rate.
    weight_decay : float, default 0.0
        Adam weight decay.
    seed : int, default 0
        Seed of the prompt sampling, FFN init and batch order.
    train_threads : int, default 1
        torch intra-op threads while training (restored after); 0 = leave as they are.
    temperature : float, default 1.0
        Probability ``sigmoid(logit / temperature)``.
    scales : tuple of int, default (2, 3)
        Window scales in patches.
    map_includes_image : bool, default True
        Harmonic mean with the image score broadcast (WinCLIP zero-shot); False: the window maps only.
    map_size : int, default 240
        Side of the returned maps in px.
    """

    object_word: str = "object"  # "object" (category-agnostic) | "class" (the class name)
    n_random_words: int = 3  # words inserted into every prompt; 0 = no augmentation
    word_source: str = "vocab"  # "vocab" (CLIP BPE whole words) | "letters" (random a-z strings)
    word_min_len: int = 3
    word_max_len: int = 10
    exclude_state_words: bool = True  # vocab: leave out words that say normal / anomalous
    insert_mode: str = "random"  # "random" gaps | "append" | "prepend"
    samples_per_side: int = 1000
    wrapper: str | None = None  # e.g. "a photo of a {}." (FADE); None = prompts as they are (WinCLIP)
    hidden: int = 128  # FFN hidden width; 0 = linear
    epochs: int = 30
    batch_size: int = 64  # 0 = full batch
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0  # prompt sampling, FFN init and batch order
    train_threads: int = 1  # torch intra-op threads while training (restored after); 0 = leave as they are
    temperature: float = 1.0  # sigmoid(logit / temperature)
    scales: tuple[int, ...] = (2, 3)
    map_includes_image: bool = True  # harmonic mean with the image score broadcast (WinCLIP zero-shot)
    map_size: int = 240

    def validated(self) -> "TamuraConfig":
        """Check the options and return the config.

        Returns
        -------
        TamuraConfig
            ``self``, or a validated copy with ``scales`` made a tuple of ints when it was given otherwise (e.g. a
            list from a JSON options dict).

        Raises
        ------
        ValueError
            When an option is out of its range or not one of its allowed values (see the attributes).
        """
        def is_int(v, lo):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= lo

        if self.object_word not in OBJECT_WORDS:
            raise ValueError(f"object_word must be one of {OBJECT_WORDS}, got {self.object_word!r}")
        if self.word_source not in WORD_SOURCES:
            raise ValueError(f"word_source must be one of {WORD_SOURCES}, got {self.word_source!r}")
        if self.insert_mode not in INSERT_MODES:
            raise ValueError(f"insert_mode must be one of {INSERT_MODES}, got {self.insert_mode!r}")
        for name, lo in (("n_random_words", 0), ("word_min_len", 1), ("word_max_len", 1), ("samples_per_side", 1),
                         ("hidden", 0), ("epochs", 1), ("batch_size", 0), ("seed", 0), ("train_threads", 0),
                         ("map_size", 1)):
            if not is_int(getattr(self, name), lo):
                raise ValueError(f"{name} must be an int >= {lo}, got {getattr(self, name)!r}")
        if self.word_min_len > self.word_max_len:
            raise ValueError(f"word_min_len {self.word_min_len} > word_max_len {self.word_max_len}")
        for name in ("lr", "temperature"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.wrapper is not None and (not isinstance(self.wrapper, str) or self.wrapper.count("{}") != 1):
            raise ValueError(f"wrapper must be None or a string with one '{{}}', got {self.wrapper!r}")
        scales = tuple(self.scales) if isinstance(self.scales, (list, tuple)) else (self.scales,)
        if not scales or len(set(scales)) != len(scales) or not all(is_int(s, 1) for s in scales):
            raise ValueError(f"scales must be distinct ints >= 1, got {self.scales!r}")
        if scales != self.scales:  # e.g. a list from a JSON options dict
            return TamuraConfig(**{**asdict(self), "scales": tuple(int(s) for s in scales)}).validated()
        return self


# ------------------------------------------------------------------------------------------------ random words


def excluded_words() -> frozenset[str]:
    """Return the words never drawn as random words (``exclude_state_words``): anything stating normality or anomaly.

    Returns
    -------
    frozenset of str
        zsad.prompts' DEFECT_WORDS and NORMAL_WORDS and the words of the normal and abnormal state phrases.
    """
    state = {w for phrase in NORMAL_STATES + ABNORMAL_STATES for w in phrase.replace("{}", " ").split()}
    return frozenset(DEFECT_WORDS | NORMAL_WORDS | state)


def vocabulary_words(tokenizer, min_len: int = 3, max_len: int = 10, exclude: Iterable[str] = ()) -> tuple[str, ...]:
    """Return the whole-word entries of a CLIP BPE vocabulary made only of ``a-z`` letters.

    Parameters
    ----------
    tokenizer : object
        open_clip's ``SimpleTokenizer`` (its ``encoder`` maps BPE strings to ids; a whole word ends in ``</w>``) or
        any mapping / iterable of such BPE strings.
    min_len : int, default 3
        Fewest letters of a word.
    max_len : int, default 10
        Most letters of a word.
    exclude : iterable of str, default ()
        Words to leave out.

    Returns
    -------
    tuple of str
        The words (without ``</w>``), sorted.

    Raises
    ------
    ValueError
        When no word qualifies.
    """
    entries = getattr(tokenizer, "encoder", tokenizer)
    pat = re.compile(rf"[a-z]{{{int(min_len)},{int(max_len)}}}")
    skip = set(exclude)
    words = {e[:-4] for e in entries if isinstance(e, str) and e.endswith("</w>")}
    out = tuple(sorted(w for w in words if pat.fullmatch(w) and w not in skip))
    if not out:
        raise ValueError(f"the vocabulary holds no whole words of {min_len}-{max_len} letters")
    return out


def draw_words(rng: np.random.Generator, n: int, source: str = "vocab", vocabulary: Sequence[str] | None = None,
               min_len: int = 3, max_len: int = 10) -> list[str]:
    """Draw ``n`` random words: distinct words of ``vocabulary`` (``source="vocab"``) or random a-z strings.

    Parameters
    ----------
    rng : numpy.random.Generator
        The source of randomness.
    n : int
        Number of words; 0 returns ``[]`` without drawing.
    source : {"vocab", "letters"}, default "vocab"
        "vocab": drawn uniformly without replacement from ``vocabulary``; "letters": strings of uniform random
        letters with lengths uniform in [min_len, max_len] (not necessarily distinct).
    vocabulary : sequence of str, optional
        The words to draw from (:func:`vocabulary_words`); needed for ``source="vocab"``.
    min_len : int, default 3
        Shortest string for ``source="letters"``.
    max_len : int, default 10
        Longest string for ``source="letters"``.

    Returns
    -------
    list of str
        The ``n`` words, in draw order.

    Raises
    ------
    ValueError
        When ``source="vocab"`` and the vocabulary is missing or holds fewer than ``n`` words, or ``source`` is
        unknown.
    """
    if n == 0:
        return []
    if source == "vocab":
        if not vocabulary or len(vocabulary) < n:
            raise ValueError(f"need a vocabulary of at least {n} words to draw from")
        return [vocabulary[i] for i in rng.choice(len(vocabulary), size=n, replace=False)]
    if source == "letters":
        lengths = rng.integers(min_len, max_len + 1, size=n)
        return ["".join(_LETTERS[rng.integers(0, 26, size=int(k))]) for k in lengths]
    raise ValueError(f"word source must be one of {WORD_SOURCES}, got {source!r}")


def insert_words(prompt: str, words: Sequence[str], rng: np.random.Generator | None = None,
                 mode: str = "random") -> tuple[str, tuple[int, ...]]:
    """Insert ``words`` into ``prompt`` (split on white space).

    ``mode="random"``: each word takes a gap 0..len(prompt words) drawn uniformly (independently, so gaps may
    repeat; words sharing a gap keep their draw order). ``"append"`` / ``"prepend"``: after / before the prompt.

    Parameters
    ----------
    prompt : str
        The base prompt.
    words : sequence of str
        Single, non-empty words to insert.
    rng : numpy.random.Generator, optional
        Draws the gaps; needed for ``mode="random"``.
    mode : {"random", "append", "prepend"}, default "random"
        Where the words go.

    Returns
    -------
    text : str
        The prompt with the words, joined by single spaces.
    positions : tuple of int
        ``positions[i]`` is the index of ``words[i]`` among the words of ``text`` (``text.split()``).

    Raises
    ------
    ValueError
        When a word is empty or holds white space, ``mode="random"`` gets no ``rng``, or ``mode`` is unknown.
    """
    base = prompt.split()
    words = [str(w) for w in words]
    if any(not w or len(w.split()) != 1 for w in words):
        raise ValueError(f"random words must be single non-empty words, got {words!r}")
    if mode == "append":
        gaps = [len(base)] * len(words)
    elif mode == "prepend":
        gaps = [0] * len(words)
    elif mode == "random":
        if rng is None:
            raise ValueError("random insertion needs a numpy Generator")
        gaps = [int(g) for g in rng.integers(0, len(base) + 1, size=len(words))] if words else []
    else:
        raise ValueError(f"insert mode must be one of {INSERT_MODES}, got {mode!r}")
    out, positions = [], [0] * len(words)
    by_gap: dict[int, list[int]] = {}
    for i, g in enumerate(gaps):
        by_gap.setdefault(g, []).append(i)
    for gap in range(len(base) + 1):
        for i in by_gap.get(gap, []):
            positions[i] = len(out)
            out.append(words[i])
        if gap < len(base):
            out.append(base[gap])
    return " ".join(out), tuple(positions)


def remove_inserted(text: str, positions: Iterable[int]) -> str:
    """Undo :func:`insert_words`: drop the words at ``positions``.

    Parameters
    ----------
    text : str
        A prompt with inserted words.
    positions : iterable of int
        Indices into ``text.split()`` of the words to drop.

    Returns
    -------
    str
        The remaining words, joined by single spaces.
    """
    drop = set(positions)
    return " ".join(w for i, w in enumerate(text.split()) if i not in drop)


@dataclass
class PromptSet:
    """Generated training prompts: ``texts[i]`` with label ``labels[i]`` (0 normal, 1 anomaly), made from
    ``base[i]`` by inserting ``words[i]`` at word positions ``positions[i]``.

    Attributes
    ----------
    texts : list of str
        The prompts; ``len(prompt_set)`` is their number.
    labels : numpy.ndarray
        (N,) int64 labels, 0 normal, 1 anomaly.
    base : list of str
        The base prompt of each sample.
    words : list of tuple of str
        The random words inserted into each sample.
    positions : list of tuple of int
        Word positions of those words in ``texts[i].split()``.
    object_name : str
        The object word the base prompts were built around.
    info : dict, default {}
        Record of how the set was made (object name, base-prompt counts, vocabulary size).
    """

    texts: list[str]
    labels: np.ndarray
    base: list[str]
    words: list[tuple[str, ...]]
    positions: list[tuple[int, ...]]
    object_name: str
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def unique(self) -> tuple[list[str], np.ndarray]:
        """Return the distinct texts and, per sample, the index of its text among them.

        Returns
        -------
        texts : list of str
            The distinct texts, in first-occurrence order.
        inverse : numpy.ndarray
            (N,) int64; ``texts[inverse[i]] == self.texts[i]``.
        """
        index: dict[str, int] = {}
        inverse = np.array([index.setdefault(t, len(index)) for t in self.texts], dtype=np.int64)
        return list(index), inverse


def build_prompt_set(cfg: TamuraConfig, object_name: str = "object",
                     vocabulary: Sequence[str] | None = None) -> PromptSet:
    """Build the labelled training prompts of a run: ``cfg.samples_per_side`` per side (normal first).

    Sampling uses ``numpy.random.default_rng(cfg.seed)``: per side the base prompts are cycled in seeded shuffled
    orders, and per sample the words are drawn, then their gaps.

    Parameters
    ----------
    cfg : TamuraConfig
        The options (validated here).
    object_name : str, default "object"
        The object word of the base prompts (:func:`zsad.prompts.winclip_prompts`).
    vocabulary : sequence of str, optional
        The word list for ``word_source="vocab"`` (:func:`vocabulary_words`).

    Returns
    -------
    PromptSet
        ``2 * cfg.samples_per_side`` samples.

    Raises
    ------
    ValueError
        When the config is invalid, or ``word_source="vocab"`` with random words gets no vocabulary.
    """
    cfg = cfg.validated()
    if cfg.word_source == "vocab" and cfg.n_random_words > 0 and not vocabulary:
        raise ValueError("word_source='vocab' needs a vocabulary (vocabulary_words(tokenizer))")
    base_sets = winclip_prompts(object_name)
    rng = np.random.default_rng(cfg.seed)
    texts, labels, bases, words, positions = [], [], [], [], []
    for label, side in enumerate(SIDES):
        base = base_sets[side]
        reps = -(-cfg.samples_per_side // len(base))
        order = np.concatenate([rng.permutation(len(base)) for _ in range(reps)])[:cfg.samples_per_side]
        for i in order:
            w = draw_words(rng, cfg.n_random_words, cfg.word_source, vocabulary, cfg.word_min_len, cfg.word_max_len)
            text, pos = insert_words(base[i], w, rng, cfg.insert_mode)
            texts.append(text)
            labels.append(label)
            bases.append(base[i])
            words.append(tuple(w))
            positions.append(pos)
    info = {"object_name": object_name, "n_base": {s: len(base_sets[s]) for s in SIDES},
            "vocabulary_size": len(vocabulary) if (vocabulary and cfg.word_source == "vocab") else None}
    return PromptSet(texts, np.asarray(labels, dtype=np.int64), bases, words, positions, object_name, info)


# ----------------------------------------------------------------------------------------------------- the FFN


class TamuraNet(nn.Module):
    """The FFN ``Linear(dim, hidden) - ReLU - Linear(hidden, 1)`` (``hidden=0``: ``Linear(dim, 1)``).

    Parameters
    ----------
    dim : int
        Input (embedding) dimension.
    hidden : int, default 128
        Hidden width; 0: a linear logistic regression.
    """

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        self.dim, self.hidden = int(dim), int(hidden)
        self.layers = (nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1)) if hidden
                       else nn.Linear(dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the anomaly logits.

        Parameters
        ----------
        x : torch.Tensor
            (..., dim) embeddings.

        Returns
        -------
        torch.Tensor
            (...) logits.
        """
        return self.layers(x).squeeze(-1)


def build_net(dim: int, hidden: int = 128, seed: int = 0) -> TamuraNet:
    """Build a :class:`TamuraNet` with PyTorch's default init drawn from ``seed`` (the global RNG state is restored).

    Parameters
    ----------
    dim : int
        Input (embedding) dimension.
    hidden : int, default 128
        Hidden width; 0: linear.
    seed : int, default 0
        Seed of the initialisation.

    Returns
    -------
    TamuraNet
        The untrained net.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TamuraNet(dim, hidden)


def train_ffn(x: torch.Tensor, y, cfg: TamuraConfig = TamuraConfig()) -> tuple[TamuraNet, dict]:
    """Train the FFN on labelled embeddings.

    ``x`` is used as given (the pipeline passes L2-normalised text embeddings). CPU, float32, Adam, BCE on the
    logit, ``cfg.epochs`` passes over mini-batches of ``cfg.batch_size`` in a seeded order (full batch when 0), with
    ``cfg.train_threads`` torch threads (restored afterwards).

    Parameters
    ----------
    x : torch.Tensor
        (N, D) embeddings.
    y : array_like
        (N,) labels in {0, 1} (0 normal, 1 anomaly).
    cfg : TamuraConfig, default TamuraConfig()
        The options (validated here): ``hidden``, ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``seed``,
        ``train_threads``.

    Returns
    -------
    net : TamuraNet
        The trained net, in eval mode.
    history : dict
        ``loss`` (mean training loss per epoch), ``final_loss`` and ``train_accuracy`` (full-set, after training),
        ``steps``, ``seconds``.

    Raises
    ------
    ValueError
        When the config is invalid, ``x`` is not 2-D, ``y`` does not have one label per row, or a label is not 0/1.
    """
    cfg = cfg.validated()
    threads = torch.get_num_threads()
    if cfg.train_threads:
        torch.set_num_threads(cfg.train_threads)
    try:
        return _train(x, y, cfg)
    finally:
        torch.set_num_threads(threads)


def _train(x, y, cfg: TamuraConfig) -> tuple[TamuraNet, dict]:
    with torch.inference_mode(False), torch.enable_grad():
        x = torch.as_tensor(x).detach().to("cpu", torch.float32).clone()
        y = torch.as_tensor(np.asarray(y)).to(torch.float32).clone()
        if x.ndim != 2 or y.shape != (x.shape[0],):
            raise ValueError(f"training data must be (N, D) with (N,) labels, got {tuple(x.shape)}, {tuple(y.shape)}")
        if not bool(((y == 0) | (y == 1)).all()):
            raise ValueError("labels must be 0 (normal) or 1 (anomaly)")
        n = x.shape[0]
        net = build_net(x.shape[1], cfg.hidden, cfg.seed)
        net.train()
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        bs = cfg.batch_size or n
        losses, steps = [], 0
        t0 = time.perf_counter()
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=gen) if bs < n else torch.arange(n)
            total = 0.0
            for start in range(0, n, bs):
                idx = order[start:start + bs]
                loss = F.binary_cross_entropy_with_logits(net(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                steps += 1
            losses.append(total / n)
        seconds = time.perf_counter() - t0
        net.eval()
        with torch.no_grad():
            logits = net(x)
            final = float(F.binary_cross_entropy_with_logits(logits, y))
            acc = float(((logits > 0).float() == y).float().mean())
    return net, {"loss": losses, "final_loss": final, "train_accuracy": acc, "steps": steps, "seconds": seconds}


@torch.no_grad()
def ffn_probability(net: TamuraNet, emb: torch.Tensor, temperature: float = 1.0, chunk: int = 65536,
                    threads: int | None = 1) -> torch.Tensor:
    """Return the FFN's anomaly probability ``sigmoid(FFN(N(e)) / temperature)`` of embeddings.

    ``N`` is L2 normalisation. Computed on the CPU in float32 (the sigmoid in float64), with ``threads`` torch threads
    (restored afterwards). A fixed count makes the probabilities bit-identical whatever the caller's setting: MKL
    rounds a GEMM of a few rows (a class's image embeddings) differently with the thread count.

    Parameters
    ----------
    net : TamuraNet
        The trained FFN.
    emb : torch.Tensor
        (..., D) embeddings, D = ``net.dim``.
    temperature : float, default 1.0
        Divides the logit before the sigmoid.
    chunk : int, default 65536
        Embeddings per forward pass.
    threads : int, optional, default 1
        torch intra-op threads; None (or 0): the caller's setting.

    Returns
    -------
    torch.Tensor
        (...) float64 probabilities.

    Raises
    ------
    ValueError
        When the embedding dimension differs from ``net.dim``.
    """
    if emb.shape[-1] != net.dim:
        raise ValueError(f"embeddings have dimension {emb.shape[-1]}, the FFN expects {net.dim}")
    flat = emb.reshape(-1, emb.shape[-1])
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        out = []
        for start in range(0, flat.shape[0], chunk):
            e = F.normalize(flat[start:start + chunk].to("cpu", torch.float32), dim=-1)
            out.append(torch.sigmoid(net(e).double() / temperature))
    finally:
        torch.set_num_threads(before)
    probs = torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
    return probs.reshape(emb.shape[:-1])


# -------------------------------------------------------------------------------------------------- scoring


def aggregate_map(image_scores: torch.Tensor, window_scores: dict[int, torch.Tensor], grid, stride: int = 1,
                  include_image: bool = True) -> torch.Tensor:
    """Build WinCLIP's zero-shot map from image and window scores.

    Per scale the window scores are harmonic-aggregated onto the patches they cover; the result is the element-wise
    harmonic mean of those scale maps and (``include_image``) the image score broadcast over the grid.

    Parameters
    ----------
    image_scores : torch.Tensor
        (N,) image scores.
    window_scores : dict of int to torch.Tensor
        ``{scale: (N, n_windows)}`` window scores, windows ordered as :func:`zsad.methods.tokens.window_masks`.
    grid : int or tuple of (int, int)
        The patch grid: a side or ``(h, w)``.
    stride : int, default 1
        Stride of the windows, in patches.
    include_image : bool, default True
        Include the image score broadcast in the harmonic mean.

    Returns
    -------
    torch.Tensor
        (N, h, w) float64 map.

    Raises
    ------
    ValueError
        When a scale's window scores do not fit its windows, or there is nothing to build a map from.
    """
    h, w = (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
    n = image_scores.shape[0]
    masks = window_masks((h, w), tuple(window_scores), stride)
    layers = [image_scores.double().view(n, 1, 1).expand(n, h, w)] if include_image else []
    for s, a in window_scores.items():
        if a.shape != (n, masks[s].shape[0]):
            raise ValueError(f"scale {s}: window scores {tuple(a.shape)}, expected ({n}, {masks[s].shape[0]})")
        layers.append(harmonic_aggregate(a, masks[s], (h, w)))
    if not layers:
        raise ValueError("no window scales and no image score to build a map from")
    return harmonic_mean(layers)


def score_windows(test_windows: WindowTokens, scorer: Callable[[torch.Tensor], torch.Tensor],
                  cfg: TamuraConfig = TamuraConfig()) -> MethodOutput:
    """Score ``test_windows`` with a probability ``scorer``: image scores and maps.

    The image score is the scorer's value of the CLS embedding; the map is :func:`aggregate_map` of it and of the
    window scores at ``cfg.scales``, bilinearly resized to ``cfg.map_size``.

    Parameters
    ----------
    test_windows : WindowTokens
        Features of the test images.
    scorer : callable
        Maps embeddings (..., D) to probabilities (...).
    cfg : TamuraConfig, default TamuraConfig()
        The options (validated here): ``scales``, ``map_includes_image``, ``map_size``.

    Returns
    -------
    MethodOutput
        Scores (N,) and maps (N, map_size, map_size) float32; ``info`` holds the method, grid and stride.

    Raises
    ------
    ValueError
        When the config is invalid or the test windows lack a scale of ``cfg.scales``.
    """
    cfg = cfg.validated()
    missing = [s for s in cfg.scales if s not in test_windows.windows]
    if missing:
        raise ValueError(f"test windows lack scales {missing} (have {sorted(test_windows.windows)})")
    s0 = scorer(test_windows.cls).double()
    win = {s: scorer(test_windows.windows[s]).double() for s in cfg.scales}
    grid_maps = aggregate_map(s0, win, test_windows.grid, test_windows.stride, cfg.map_includes_image)
    maps = resize_maps(grid_maps.float(), cfg.map_size)
    info = {"method": "tamura", "grid": list(test_windows.grid), "stride": test_windows.stride}
    return MethodOutput(s0.cpu().numpy(), maps.cpu().numpy().astype(np.float32), info)


def tamura(test_windows: WindowTokens, text_embeddings: torch.Tensor, labels, cfg: TamuraConfig = TamuraConfig()
           ) -> MethodOutput:
    """Train the FFN on labelled text embeddings and score ``test_windows`` with it.

    Parameters
    ----------
    test_windows : WindowTokens
        Features of the test images.
    text_embeddings : torch.Tensor
        (N, D) text embeddings of the training prompts (L2-normalised here).
    labels : array_like
        (N,) labels in {0, 1} (0 normal, 1 anomaly).
    cfg : TamuraConfig, default TamuraConfig()
        The options (validated here).

    Returns
    -------
    MethodOutput
        Scores (N_img,) in [0, 1] (the FFN's anomaly probability of the CLS embedding) and maps
        (N_img, map_size, map_size) float32 in [0, 1]; ``info`` holds the config, the training curve and accuracy.

    Raises
    ------
    ValueError
        When the config is invalid, the text and image embedding dimensions differ, or the training data or test
        windows do not fit (see :func:`train_ffn`, :func:`score_windows`).
    """
    cfg = cfg.validated()
    if text_embeddings.shape[-1] != test_windows.cls.shape[-1]:
        raise ValueError(f"text embeddings have dimension {text_embeddings.shape[-1]}, image embeddings "
                         f"{test_windows.cls.shape[-1]}")
    net, history = train_ffn(F.normalize(torch.as_tensor(text_embeddings).float(), dim=-1), labels, cfg)
    out = score_windows(test_windows, lambda e: ffn_probability(net, e, cfg.temperature), cfg)
    out.info.update({**asdict(cfg), "scales": list(cfg.scales), "training": history})
    return out
