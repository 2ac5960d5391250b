"""The on-disk feature cache: image-encoder outputs keyed by content, stored as safetensors, never served stale.

Every image encoder pass over a dataset goes through :mod:`zsad.features` (CLIP + GEM tokens),
:func:`zsad.windows.extract_window_tokens` (WinCLIP windows) or :func:`zsad.cnn.extract_patch_features`
(PatchCore). Given a :class:`FeatureCache` they first look every image up, run the model only on the misses
(batched as without a cache), store those, and return exactly what the uncached call returns (bit-identical with the
default float32 storage).

The key
-------
One entry holds the features of one image for one feature *kind* and one set of parameters. Its key is the sha256 of
a canonical JSON document (stored in the entry itself and compared on every read) made of

- ``format``: :data:`FORMAT_VERSION`, bumped when the layout of entries changes;
- ``kind``: ``tokens`` (CLIP + GEM tokens), ``windows`` (WinCLIP), ``cnn`` (PatchCore), ``text`` (prompt embeddings),
  ``knn`` (FADE's vision-guided patch distances of an image, derived from its tokens: the same for every table that
  scores that image with the same stream, size and references), ``crops`` (``encode_image`` of Cheung et al.'s object
  crops, keyed by the crop's pixels);
- ``model``: :func:`model_identity`: architecture name + checkpoint sha256, or ``"random"`` + the init seed, and the
  parameter dtype;
- ``input``: sha256 of the image file's bytes (:meth:`FeatureCache.digest`), or of the prompt for ``text`` (one
  entry per prompt)
  (for ``knn`` the reference images' digests are in ``params``);
- ``params``: the preprocessing and feature parameters (size, mean/std, GEM depth, the compute dtype of the tokens
  pass (``autocast``: null = float32, ``bf16``, ``fp16``), window scales/stride/patch stream, CNN layers/dim, ...),
  filled in by the extraction function;
- ``storage``: ``float32`` (default) or ``float16`` (how entries are stored; independent of the compute dtype);
- ``code``: sha256 of the zsad source files whose code computes that kind (:data:`CODE_FILES`), so an edit of the
  GEM forward, the window forward, the CNN feature code or the preprocessing recomputes instead of serving features
  of the old code; and ``software``: the torch / torchvision / open_clip / Pillow versions (numerics and resizing).

File layout: ``<root>/<kind>/<first two hex digits>/<key>.safetensors``. ``root`` is ``$ZSAD_CACHE`` or
``<project root>/cache`` (git-ignored; ``~/.cache/zsad`` when installed, :func:`cache_root`). Each file holds
that image's tensors plus metadata: the key document, a sha256 per tensor and where it was computed. A read
checks that the file parses, that the key document matches and that every checksum and expected tensor name is
there; anything else (truncated, garbage, another entry) is a :class:`CacheWarning`, the file is dropped and the
features are recomputed. Writes go to a temporary file in the same folder (``*.tmp-*``, git-ignored) and are moved
into place with ``os.replace``, so a reader or a concurrent writer only ever sees a complete file. Nothing is
pickled: entries are safetensors, read from bytes.

Determinism note: a model's output for one image can differ in the last bits with the batch it was computed in (BLAS
blocking). With a cold cache the misses are batched exactly like the uncached call, so the result is bit-identical;
once stored, the entry is what every later run reads, whatever the batch composition (more reproducible, not less).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import torch

from zsad import atomic
from zsad.digest import file_sha256
from zsad.results import package_versions

__all__ = ["FORMAT_VERSION", "KINDS", "CACHE_ENV", "CacheWarning", "FeatureCache", "Lookup", "cache_root",
           "model_identity", "unwrap_model", "encode_prompts_cached"]

FORMAT_VERSION = 2  # 2: text entries hold one prompt each
KINDS = ("tokens", "windows", "cnn", "text", "knn", "crops")
CACHE_ENV = "ZSAD_CACHE"
SUFFIX = ".safetensors"
TMP_MARK = atomic.TMP_MARK  # the temporary files atomic.write_bytes leaves if a writer dies
_PACKAGE_DIR = Path(__file__).resolve().parent
#: zsad source files whose code produces each kind of features (their sha256 is part of every key of the kind).
CODE_FILES = {
    "tokens": ("features.py", "gem.py", "data/images.py"),
    "windows": ("windows.py", "methods/tokens.py", "gem.py", "data/images.py"),
    "cnn": ("cnn.py", "data/images.py"),
    "text": ("text.py",),
    "knn": ("features.py", "gem.py", "data/images.py", "methods/fade.py"),  # FADE's patch distances, from tokens
    "crops": ("runners.py", "data/images.py"),  # Cheung et al.'s object crops through encode_image
}
_SOFTWARE = ("torch", "torchvision", "open-clip-torch", "pillow")


class CacheWarning(UserWarning):
    """A cache entry that could not be used (corrupt, truncated, foreign) and was recomputed."""


class _Corrupt(Exception):
    pass


# ------------------------------------------------------------------------------------------------- key parts


def cache_root() -> Path:
    """Return the default cache folder.

    Returns
    -------
    pathlib.Path
        ``$ZSAD_CACHE`` if set (``~`` expanded), else ``<project root>/cache`` in a clone, ``~/.cache/zsad``
        (``$XDG_CACHE_HOME/zsad`` when that is set) when installed.
    """
    value = os.environ.get(CACHE_ENV, "").strip()
    if value:
        return Path(value).expanduser()
    from zsad.config import default_cache_dir

    return default_cache_dir()


@lru_cache(maxsize=None)
def code_fingerprint(kind: str) -> str:
    """Return the sha256 over the zsad source files that compute ``kind`` (read once per process).

    Memoised, so it is the fingerprint of the files as they were when first asked (normally the imported code).

    Parameters
    ----------
    kind : str
        A feature kind, a key of :data:`CODE_FILES`.

    Returns
    -------
    str
        64 hex digits.

    Raises
    ------
    KeyError
        When ``kind`` is not a key of :data:`CODE_FILES`.
    """
    h = hashlib.sha256()
    for rel in CODE_FILES[kind]:
        h.update(rel.encode() + b"\0" + (_PACKAGE_DIR / rel).read_bytes() + b"\0")
    return h.hexdigest()


@lru_cache(maxsize=None)
def software_versions() -> dict[str, str]:
    """Return the versions of the packages whose numerics enter every key (memoised per process).

    Returns
    -------
    dict of str to str
        torch, torchvision, open-clip-torch and pillow versions (:func:`zsad.results.package_versions`).
    """
    return package_versions(_SOFTWARE)


def unwrap_model(model) -> torch.nn.Module:
    """Return the ``nn.Module`` of a :class:`zsad.backbone.LoadedModel` / :class:`zsad.cnn.LoadedCNN`.

    Parameters
    ----------
    model : LoadedModel or LoadedCNN or torch.nn.Module
        A loaded model (anything with a module ``.model`` and a ``.sha256``) or a module.

    Returns
    -------
    torch.nn.Module
        ``model.model``, or ``model`` itself when it is a module.

    Raises
    ------
    TypeError
        When ``model`` is neither.
    """
    inner = getattr(model, "model", None)
    if isinstance(inner, torch.nn.Module) and hasattr(model, "sha256"):
        return inner
    if isinstance(model, torch.nn.Module):
        return model
    raise TypeError(f"expected a torch module, LoadedModel or LoadedCNN, got {type(model).__name__}")


def _param_dtype(module: torch.nn.Module) -> str:
    p = next(module.parameters(), None)
    return str(p.dtype).removeprefix("torch.") if p is not None else "none"


def _state_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()


def model_identity(model) -> dict:
    """Return what identifies a model's weights in a key.

    Parameters
    ----------
    model : LoadedModel or LoadedCNN or torch.nn.Module
        The model.

    Returns
    -------
    dict
        For a :class:`~zsad.backbone.LoadedModel` or :class:`~zsad.cnn.LoadedCNN`: ``{"arch": name, "weights":
        checkpoint sha256 | "random", "seed": init seed (random weights only, else None), "dtype": parameter
        dtype}``. For a bare ``nn.Module`` (no provenance): its class name and ``"state:"`` + the sha256 of its
        whole state dict (exact, but it reads every weight each call; pass the Loaded* object instead).

    Raises
    ------
    TypeError
        When ``model`` is not a module or a loaded model.
    """
    module = unwrap_model(model)
    if module is not model:
        sha = str(model.sha256)
        return {"arch": str(model.name), "weights": sha, "seed": int(model.seed) if sha == "random" else None,
                "dtype": _param_dtype(module)}
    return {"arch": type(module).__name__, "weights": "state:" + _state_digest(module), "seed": None,
            "dtype": _param_dtype(module)}


def _canonical(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _tensor_digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"").hexdigest()


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; one of {', '.join(KINDS)}")
    return kind


# ------------------------------------------------------------------------------------------------- the cache


class FeatureCache:
    """Content-keyed feature store under ``root`` (default :func:`cache_root`).

    Parameters
    ----------
    root : str or os.PathLike, optional
        Cache folder (``~`` expanded); created on the first write. None: :func:`cache_root`.
    float16 : bool, default False
        Store floating tensors as float16 (half the disk; what is returned is then the float16-rounded value,
        identical between the computing call and every later read). False: float32, results unchanged. The storage
        dtype is part of the key, so the two never mix.

    Attributes
    ----------
    root : pathlib.Path
        The cache folder.
    float16 : bool
        The storage choice.
    stats : dict of str to collections.Counter
        ``stats[kind]`` counts ``hits``, ``misses``, ``stored``, ``corrupt`` and ``write_errors`` (unique keys) of
        this object.
    """

    def __init__(self, root: str | os.PathLike | None = None, *, float16: bool = False):
        self.root = Path(root).expanduser() if root is not None else cache_root()
        self.float16 = bool(float16)
        self.stats: dict[str, Counter] = {k: Counter() for k in KINDS}

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.root)!r}, float16={self.float16})"

    @property
    def storage(self) -> str:
        """str: the storage dtype of entries, ``"float16"`` or ``"float32"`` (part of every key)."""
        return "float16" if self.float16 else "float32"

    # -- keys
    def digest(self, item) -> str:
        """Return the sha256 of an image's content.

        File digests are memoised per process (:func:`zsad.digest.file_sha256`): every run of a table reads the
        same images.

        Parameters
        ----------
        item : ImageRecord or str or os.PathLike or PIL.Image.Image
            An ImageRecord (its ``.path``), a path, or a PIL image.

        Returns
        -------
        str
            The file bytes' sha256 (64 hex digits); for a PIL image ``"pil:"`` + the sha256 of its mode, size and
            pixel bytes.

        Raises
        ------
        FileNotFoundError
            For a missing file, as the loaders.
        """
        from PIL import Image

        if isinstance(item, Image.Image):
            h = hashlib.sha256(f"PIL|{item.mode}|{item.size}|".encode())
            h.update(item.tobytes())
            return "pil:" + h.hexdigest()
        return file_sha256(getattr(item, "path", item))  # FileNotFoundError for a missing file, as the loaders

    def key_document(self, kind: str, model_id: dict, input_digest: str, params: dict) -> str:
        """Return the canonical JSON the key hashes (see the module docstring).

        Parameters
        ----------
        kind : str
            A feature kind of :data:`KINDS`.
        model_id : dict
            :func:`model_identity` of the model.
        input_digest : str
            :meth:`digest` of the image (or the prompt's digest for ``text``).
        params : dict
            The preprocessing and feature parameters (JSON-serialisable).

        Returns
        -------
        str
            Sorted-key, compact, ASCII JSON, also holding the format version, storage dtype, code fingerprint and
            software versions.

        Raises
        ------
        ValueError
            When ``kind`` is unknown.
        """
        return _canonical({"format": FORMAT_VERSION, "kind": _check_kind(kind), "model": model_id,
                           "input": input_digest, "params": params, "storage": self.storage,
                           "code": code_fingerprint(kind), "software": software_versions()})

    @staticmethod
    def key_of(document: str) -> str:
        """Return the key of a key document.

        Parameters
        ----------
        document : str
            As :meth:`key_document` returns it.

        Returns
        -------
        str
            The sha256 of its UTF-8 bytes, 64 hex digits.
        """
        return hashlib.sha256(document.encode()).hexdigest()

    def path_of(self, kind: str, key: str) -> Path:
        """Return the file of an entry: ``<root>/<kind>/<first two hex digits>/<key>.safetensors``.

        Parameters
        ----------
        kind : str
            A feature kind of :data:`KINDS`.
        key : str
            The entry's key (:meth:`key_of`).

        Returns
        -------
        pathlib.Path
            The path (whether or not the file exists).

        Raises
        ------
        ValueError
            When ``kind`` is unknown.
        """
        return self.root / _check_kind(kind) / key[:2] / (key + SUFFIX)

    # -- one entry
    def load(self, kind: str, document: str, expect: Iterable[str] = ()) -> dict[str, torch.Tensor] | None:
        """Return the tensors of the entry with this key document, or None if there is none.

        A file that is there but unusable is warned about (:class:`CacheWarning`), removed, counted as ``corrupt``
        and reported as None.

        Parameters
        ----------
        kind : str
            A feature kind of :data:`KINDS`.
        document : str
            The key document (:meth:`key_document`); must equal the one stored in the entry.
        expect : iterable of str, default ()
            Tensor names the entry must hold.

        Returns
        -------
        dict of str to torch.Tensor or None
            Owned copies, float tensors as float32.
        """
        path = self.path_of(kind, self.key_of(document))
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            tensors = self._parse(data, document, set(expect))
        except _Corrupt as exc:
            warnings.warn(f"feature cache: {path}: {exc}; recomputing", CacheWarning, stacklevel=3)
            self.stats[kind]["corrupt"] += 1
            try:
                path.unlink()
            except OSError:
                pass
            return None
        return tensors

    @staticmethod
    def _parse(data: bytes, document: str, expect: set) -> dict[str, torch.Tensor]:
        from safetensors.torch import load as st_load

        if len(data) < 8:
            raise _Corrupt(f"{len(data)} bytes, shorter than a safetensors header")
        n = int.from_bytes(data[:8], "little")
        if n > len(data) - 8:
            raise _Corrupt("truncated safetensors header")
        try:
            header = json.loads(data[8:8 + n])
            meta = header.get("__metadata__") or {}
            sums = json.loads(meta.get("checksums", "null"))
        except (ValueError, AttributeError) as exc:
            raise _Corrupt(f"unreadable safetensors header ({exc})") from None
        if meta.get("key") != document:
            raise _Corrupt("stored key document differs from the requested one")
        try:
            tensors = st_load(data)
        except Exception as exc:  # safetensors raises its own error type for truncated or inconsistent files
            raise _Corrupt(f"safetensors cannot load it ({type(exc).__name__}: {exc})") from None
        if not isinstance(sums, dict) or set(sums) != set(tensors):
            raise _Corrupt("checksums do not list the stored tensors")
        if not expect <= set(tensors):
            raise _Corrupt(f"missing tensors {sorted(expect - set(tensors))}")
        out = {}
        for name, t in tensors.items():
            if _tensor_digest(t) != sums[name]:
                raise _Corrupt(f"checksum mismatch for tensor {name!r}")
            # owned copies (the parsed tensors are views of ``data``); float16 storage comes back as float32
            out[name] = t.to(torch.float32, copy=True) if t.is_floating_point() else t.clone()
        return out

    def save(self, kind: str, document: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Store one entry atomically.

        A failed write (disk full, read-only folder) is a :class:`CacheWarning`, not an error: the features are
        still returned, the next run computes them again.

        Parameters
        ----------
        kind : str
            A feature kind of :data:`KINDS`.
        document : str
            The key document (:meth:`key_document`), stored in the entry.
        tensors : dict of str to torch.Tensor
            The entry's tensors (moved to the CPU; floating ones stored in the storage dtype).

        Returns
        -------
        dict of str to torch.Tensor
            The tensors as a later :meth:`load` will return them (float tensors as float32, after the storage
            rounding).
        """
        from safetensors.torch import save as st_save

        stored, back = {}, {}
        for name, t in tensors.items():
            t = t.detach().cpu()
            if t.is_floating_point():
                t = t.to(torch.float16 if self.float16 else torch.float32)
            stored[name] = t = t.contiguous().clone()
            back[name] = t.float() if t.is_floating_point() and t.dtype != torch.float32 else t
        meta = {"zsad_cache_format": str(FORMAT_VERSION), "kind": kind, "key": document,
                "checksums": _canonical({name: _tensor_digest(t) for name, t in stored.items()}),
                "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "host": platform.node(), "torch_device": _device_label(tensors)}
        path = self.path_of(kind, self.key_of(document))
        try:
            atomic.write_bytes(path, st_save(stored, metadata=meta))  # readers see whole files only
        except OSError as exc:
            warnings.warn(f"feature cache: cannot write {path} ({exc}); continuing without storing it",
                          CacheWarning, stacklevel=3)
            self.stats[kind]["write_errors"] += 1
            return back
        self.stats[kind]["stored"] += 1
        return back

    # -- many images
    def lookup(self, kind: str, model, params: dict, items: Sequence, *, expect: Iterable[str] = (),
               digests: Sequence[str] | None = None) -> "Lookup":
        """Look every item up; see :class:`Lookup`.

        Parameters
        ----------
        kind : str
            A feature kind of :data:`KINDS`.
        model : LoadedModel or LoadedCNN or torch.nn.Module or dict
            A Loaded* object, a module or an identity dict (:func:`model_identity`).
        params : dict
            The preprocessing and feature parameters of the key.
        items : sequence
            The images (anything :meth:`digest` takes); not read when ``digests`` is given.
        expect : iterable of str, default ()
            Tensor names every entry must hold.
        digests : sequence of str, optional
            The items' input digests, when already known (e.g. prompt digests for ``text``).

        Returns
        -------
        Lookup
            Hits loaded, misses listed.
        """
        model_id = model if isinstance(model, dict) else model_identity(model)
        digests = list(digests) if digests is not None else [self.digest(it) for it in items]
        return Lookup(self, kind, [self.key_document(kind, model_id, d, params) for d in digests], tuple(expect))

    def compute_missing(self, kind: str, model, params: dict, items: Sequence, compute, *, names: Iterable[str],
                        digests: Sequence[str] | None = None) -> "Lookup":
        """Look every item up, compute the misses and store them.

        Parameters
        ----------
        kind : str
            A feature kind of :data:`KINDS`.
        model : LoadedModel or LoadedCNN or torch.nn.Module or dict
            As :meth:`lookup`.
        params : dict
            The preprocessing and feature parameters of the key.
        items : sequence
            The images, as :meth:`lookup`.
        compute : callable
            ``compute(positions)`` returns ``{name: tensor}`` with one row per given position (in that order); it
            is called once, only when something is missing. Each row is stored.
        names : iterable of str
            The tensor names of an entry (expected on read, taken from ``compute``'s result).
        digests : sequence of str, optional
            As :meth:`lookup`.

        Returns
        -------
        Lookup
            Complete: every position can be read with :meth:`Lookup.get`.
        """
        names = tuple(names)
        lk = self.lookup(kind, model, params, items, expect=names, digests=digests)
        if lk.missing:
            fresh = compute(lk.missing)
            for j, i in enumerate(lk.missing):
                lk.store(i, {name: fresh[name][j] for name in names})
        return lk

    # -- maintenance
    def _entries(self, kind: str) -> list[Path]:
        folder = self.root / kind
        return sorted(folder.glob("??/*" + SUFFIX)) if folder.is_dir() else []

    def _temps(self, kind: str) -> list[Path]:
        folder = self.root / kind
        return sorted(folder.glob("??/*" + SUFFIX + TMP_MARK + "*")) if folder.is_dir() else []

    def info(self) -> dict:
        """Summarise what the cache folder holds.

        Returns
        -------
        dict
            ``{"root": str, "kinds": {kind: {"entries", "bytes", "temp_files"}}, "entries", "bytes"}`` (the last
            two: totals over kinds).
        """
        kinds = {}
        for kind in KINDS:
            files = self._entries(kind)
            kinds[kind] = {"entries": len(files), "bytes": sum(_size(p) for p in files),
                           "temp_files": len(self._temps(kind))}
        return {"root": str(self.root), "kinds": kinds, "entries": sum(k["entries"] for k in kinds.values()),
                "bytes": sum(k["bytes"] for k in kinds.values())}

    def clear(self, kind: str | None = None) -> dict:
        """Delete the entries (and leftover temporary files) of one kind or of all.

        Only files named like cache entries inside ``<root>/<kind>/<xx>/`` are deleted, then empty folders.

        Parameters
        ----------
        kind : str, optional
            A feature kind of :data:`KINDS`; None: all kinds.

        Returns
        -------
        dict
            ``{"entries": int, "bytes": int}`` of the removed entries (temporary files are removed but not
            counted).

        Raises
        ------
        ValueError
            When ``kind`` is unknown.
        """
        kinds = KINDS if kind is None else (_check_kind(kind),)
        removed = {"entries": 0, "bytes": 0}
        for k in kinds:
            for p in self._entries(k) + self._temps(k):
                size = _size(p)
                try:
                    p.unlink()
                except FileNotFoundError:
                    continue
                if not p.name.endswith(SUFFIX):
                    continue
                removed["entries"] += 1
                removed["bytes"] += size
            folder = self.root / k
            if folder.is_dir():
                for sub in sorted(folder.iterdir()):
                    if sub.is_dir() and len(sub.name) == 2:
                        _rmdir_quiet(sub)
                _rmdir_quiet(folder)
        return removed


class Lookup:
    """The cache state of a list of items for one kind and parameter set.

    ``keys[i]`` is item i's key; ``missing`` lists, once per distinct missing key, the position of its first item
    (identical files share one entry and are computed once). Compute the missing items, :meth:`store` each, then
    :meth:`get` every position. Made by :meth:`FeatureCache.lookup`, which loads the hits on construction.

    Parameters
    ----------
    cache : FeatureCache
        The cache to read and write.
    kind : str
        A feature kind of :data:`KINDS`.
    documents : list of str
        The key document of every item.
    expect : tuple of str
        Tensor names every entry must hold.

    Attributes
    ----------
    keys : list of str
        The key of every item.
    missing : list of int
        Positions of the first item of every distinct missing key.
    """

    def __init__(self, cache: FeatureCache, kind: str, documents: list[str], expect: tuple[str, ...]):
        self.cache, self.kind = cache, kind
        self.keys = [cache.key_of(d) for d in documents]
        self._documents = dict(zip(self.keys, documents))
        self._entries: dict[str, dict[str, torch.Tensor]] = {}
        self.missing: list[int] = []
        seen = set()
        stats = cache.stats[kind]
        for i, key in enumerate(self.keys):
            if key in seen:
                continue
            seen.add(key)
            found = cache.load(kind, self._documents[key], expect)
            if found is None:
                self.missing.append(i)
                stats["misses"] += 1
            else:
                self._entries[key] = found
                stats["hits"] += 1

    def store(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        """Save the computed tensors of an item to the cache, and keep them as the cache will return them.

        Parameters
        ----------
        index : int
            The item's position (every item with the same key shares the entry).
        tensors : dict of str to torch.Tensor
            Its tensors.
        """
        key = self.keys[index]
        self._entries[key] = self.cache.save(self.kind, self._documents[key], tensors)

    def get(self, index: int) -> dict[str, torch.Tensor]:
        """Return the tensors of an item.

        Parameters
        ----------
        index : int
            The item's position.

        Returns
        -------
        dict of str to torch.Tensor
            Its entry, found or stored.

        Raises
        ------
        KeyError
            When the item is missing and was not stored.
        """
        return self._entries[self.keys[index]]

    def stack(self, name: str) -> torch.Tensor:
        """Stack one tensor over all positions (all must be stored or found).

        Parameters
        ----------
        name : str
            The tensor name.

        Returns
        -------
        torch.Tensor
            ``torch.stack`` of tensor ``name`` of every item, in item order.
        """
        return torch.stack([self.get(i)[name] for i in range(len(self.keys))])


def _device_label(tensors: dict) -> str:
    devices = {str(t.device) for t in tensors.values()}
    return ",".join(sorted(devices))


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def _rmdir_quiet(p: Path) -> None:
    try:
        p.rmdir()
    except OSError:
        pass


# ------------------------------------------------------------------------------------------ text embeddings


_TEXT_DEFAULT = object()


def encode_prompts_cached(model, prompts: Sequence[str], *, cache: FeatureCache | None, tokenizer=None,
                          wrapper=_TEXT_DEFAULT, normalise: bool = True, **kwargs) -> torch.Tensor:
    """Run :func:`zsad.text.encode_prompts` through the cache (kind ``text``), keyed by model and prompt content.

    One entry per prompt, so ensembles that share prompts encode each prompt once.

    Parameters
    ----------
    model : LoadedModel or torch.nn.Module
        A :class:`~zsad.backbone.LoadedModel` (its tokenizer is used unless ``tokenizer`` is given), or a module
        (then pass ``tokenizer``).
    prompts : sequence of str
        The prompts; must not be empty when ``cache`` is given.
    cache : FeatureCache or None
        The cache; None simply calls ``encode_prompts``.
    tokenizer : callable, optional
        The tokenizer; default: ``model.tokenizer``.
    wrapper : str or None, optional
        ``encode_prompts``' wrapper (default: FADE's wrapper, ``zsad.text.FADE_WRAPPER``); part of the key.
    normalise : bool, default True
        ``encode_prompts``' L2 normalisation; part of the key.
    **kwargs
        Further arguments of ``encode_prompts``: ``context`` ("full" or "trim") is part of the key;
        ``batch_size`` is not (the study never changes it). With ``context="trim"`` an embedding
        depends, in its last bits, on which prompts share its batch, hence on which were missing from the cache.

    Returns
    -------
    torch.Tensor
        What ``encode_prompts`` returns, one row per prompt.

    Raises
    ------
    ValueError
        When no tokenizer is available, or ``prompts`` is empty with a cache.
    TypeError
        When ``model`` is not a module or loaded model.
    """
    from zsad.text import FADE_WRAPPER, encode_prompts

    if wrapper is _TEXT_DEFAULT:
        wrapper = FADE_WRAPPER

    module = unwrap_model(model)
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError("encode_prompts_cached needs a tokenizer: pass a LoadedModel or tokenizer=...")
    if cache is None:
        return encode_prompts(module, tok, prompts, wrapper=wrapper, normalise=normalise, **kwargs)
    if not prompts:
        raise ValueError("no prompts to encode")
    # one entry per prompt: ensembles that share prompts (WinCLIP's, an LLM file alone and in a union, ...)
    # encode each prompt once
    # trimmed and full-context embeddings differ in the last bits (zsad.text): never serve one for the other
    params = {"wrapper": wrapper, "normalise": bool(normalise), "context": kwargs.get("context", "full")}
    digests = ["prompt:" + hashlib.sha256(p.encode()).hexdigest() for p in prompts]

    def compute(missing):
        return {"embedding": encode_prompts(module, tok, [prompts[i] for i in missing], wrapper=wrapper,
                                            normalise=normalise, **kwargs)}

    return cache.compute_missing("text", model, params, [None] * len(prompts), compute, names=("embedding",),
                                 digests=digests).stack("embedding")
