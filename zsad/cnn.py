"""The CNN backbone of the PatchCore baseline: torchvision WideResNet-50-2, from a local file or seeded random init.

Mirrors :mod:`zsad.backbone` (the CLIP loader): zsad never downloads weights. ``load_wide_resnet50(checkpoint)``
loads torchvision's ImageNet state dict (``wide_resnet50_2-95faca4d.pth``, the ``IMAGENET1K_V1`` weights the
PatchCore paper and its code use; the ``-9ba9bcbe`` V2 file loads too) with ``torch.load(weights_only=True)``;
``checkpoint=None`` gives seeded random weights, and everything made with them says so
(:attr:`LoadedCNN.weights_label`). ``$ZSAD_CNN_CHECKPOINT`` names the file for callers that want an environment
default (:func:`default_cnn_checkpoint`); the loader itself never reads the environment.

Preprocessing (:func:`imagenet_preprocess`): ``Resize((s, s), bicubic)`` -> ``ToTensor`` -> ``Normalize`` with the
ImageNet mean/std. The PatchCore code resizes to 256 and centre-crops 224; in this study every method sees the same
square-resized image (the transform of :func:`zsad.data.preprocess`, which FADE uses), so the only difference from
the CLIP input is the normalisation constants. Nothing is cropped away, so the maps cover the whole image and align
with the masks.

Locally aware patch features (:func:`extract_patch_features`, Roth et al. 2022, sec. 3.1), for the default
``layers=("layer2", "layer3")`` and ``dim=1024``:

1. each layer's feature map is average-pooled over 3x3 neighbourhoods (stride 1, zero padding 1, the zeros counted
   at the border, like the paper code's zero-padded unfold followed by a mean): patch size p = 3;
2. every map after the first is upsampled bilinearly (``align_corners=False``) to the first layer's grid (28x28 at
   224 px: stride 8);
3. each layer's per-position vector is reduced to ``dim / len(layers)`` channels by adaptive average pooling over
   the channel axis (layer2: 512 -> 512, unchanged; layer3: 1024 -> 512, means of adjacent channel pairs), and the
   layers are concatenated: ``(N, h*w, dim)``.

The paper's code reaches (almost) the same vector by another road: it unfolds 3x3xC patches, adaptive-average-pools
each layer's flattened ``C*9`` vector to 1024 and then the stacked ``2 x 1024`` vector to 1024 (= means of adjacent
pairs): the first 512 outputs come from layer2, the last 512 from layer3, each close to a channel (pair) mean over the
3x3 neighbourhood. Pooling space first and then channels, as here, gives exactly those means without the
overlapping-window smear of pooling the interleaved ``C*9`` vector.

Feature extraction runs the network up to ``layer3`` only (``layer4`` and ``fc`` are never evaluated); the network
is in eval mode (batch norm uses its running statistics).

Reproducibility (:func:`reproducible_convolutions`): on the CPU the forward runs torch's own convolution (im2col and
one GEMM per image) instead of oneDNN (and never NNPACK). oneDNN picks its blocking, and so the order in which it sums
over input channels, by the number of intra-op threads: the same image gave features that differed by up to 1.9e-5
between 1 and 2 torch threads (WideResNet-50-2, random weights, 224 px; 5.7e-5 at layer3), enough to move
PatchCore's scores by 7.6e-6 and its pixel metrics in the 8th digit, so a run's bytes depended on the thread count
(a Ray task ran with 1 thread, the driver with all cores). Torch's own convolution gave the same bits for 1 to 16
threads and for batches of 1 to 6 images (``benchmarks/bench_executor_equality.py``, ``tests/test_distributed.py``),
so features read from the cache equal freshly computed ones whatever run computed them. It costs time on the CPU:
about 2x oneDNN's (0.24 s against 0.13 s per 224 px image with 1 thread on the project's 2-core machine). CUDA runs
and CPU bf16 autocast runs keep their fast kernels.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision import transforms
from tqdm import tqdm  # not tqdm.auto: it warns on stderr in kernels without ipywidgets

from zsad.backbone import RANDOM, CheckpointError, WeightsInfo, _read_state_dict, file_sha256
from zsad.data import ImageRecord, load_image, to_rgb

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CNN_NAME",
    "CNN_CHECKPOINT_ENV",
    "LAYERS",
    "LoadedCNN",
    "load_wide_resnet50",
    "default_cnn_checkpoint",
    "imagenet_transform",
    "imagenet_preprocess",
    "reproducible_convolutions",
    "cnn_feature_maps",
    "extract_patch_features",
]

#: torchvision's ImageNet normalisation (what WideResNet-50-2 was trained with, and what PatchCore uses).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CNN_NAME = "wide_resnet50_2"
CNN_CHECKPOINT_ENV = "ZSAD_CNN_CHECKPOINT"
#: Blocks whose output can be tapped, in forward order.
LAYERS = ("layer1", "layer2", "layer3", "layer4")
# torchvision's file names carry the first hex digits of the file's sha256 (torch.hub checks them the same way)
_HASH_IN_NAME = re.compile(r"^wide_resnet50_2-([0-9a-f]{8,64})\.pth?$")


@dataclass
class LoadedCNN(WeightsInfo):
    """A torchvision WideResNet-50-2 in eval mode with what provenance needs to know about its weights.

    Attributes
    ----------
    model : torch.nn.Module
        The network, in eval mode.
    name : str
        Architecture name (torchvision's, ``"wide_resnet50_2"``).
    checkpoint : str or None
        Absolute path of the weights file, None for random init.
    sha256 : str
        Checkpoint sha256, or ``"random"``.
    seed : int
        Seed of the random init.
    random_note : str
        What random weights mean for this model (class attribute, used by ``weights_label``).
    """

    model: torch.nn.Module
    name: str  # architecture name (torchvision's)
    checkpoint: str | None  # absolute path of the weights file, None for random init
    sha256: str  # checkpoint sha256, or "random"
    seed: int  # seed of the random init

    random_note = "numbers test the pipeline, not ImageNet features"

    @property
    def device(self) -> torch.device:
        """torch.device: the device of the model's (first) parameters."""
        return next(self.model.parameters()).device


def default_cnn_checkpoint() -> str | None:
    """Return the file named by ``$ZSAD_CNN_CHECKPOINT``, or None (random weights).

    Returns
    -------
    str or None
        The variable's value with surrounding white space stripped; None when it is unset or empty.
    """
    value = os.environ.get(CNN_CHECKPOINT_ENV, "").strip()
    return value or None


def load_wide_resnet50(checkpoint: str | PathLike | None = None, seed: int = 0,
                       device: str | torch.device = "cpu") -> LoadedCNN:
    """Return torchvision's ``wide_resnet50_2`` in eval mode, from a local state dict or seeded random init.

    Parameters
    ----------
    checkpoint : str or os.PathLike, optional
        Path of torchvision's ImageNet state dict (``wide_resnet50_2-*.pth``), read with
        ``torch.load(weights_only=True)`` and loaded strictly (floating tensors cast to float32). None: random
        weights (torchvision's own init, seeded; the caller's global RNG state is left untouched).
    seed : int, default 0
        Seed of the random initialisation (recorded also when a checkpoint is loaded).
    device : str or torch.device, default "cpu"
        Where the model goes.

    Returns
    -------
    LoadedCNN
        The model in eval mode, with its provenance.

    Raises
    ------
    CheckpointError
        Naming the file when it is missing, unreadable, not a state dict, made for another architecture, or when
        its sha256 does not start with the hash that its torchvision file name carries.
    ValueError
        When ``seed`` is not an int.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    sha = RANDOM
    ckpt_path = state = None
    if checkpoint is not None:
        ckpt_path = Path(checkpoint).expanduser().resolve()
        if not ckpt_path.is_file():
            raise CheckpointError(f"{ckpt_path}: checkpoint file not found (a torchvision wide_resnet50_2-*.pth "
                                  f"state dict; ${CNN_CHECKPOINT_ENV} may name it)")
        sha = file_sha256(ckpt_path)
        named = _HASH_IN_NAME.search(ckpt_path.name)
        if named and not sha.startswith(named.group(1)):
            raise CheckpointError(f"{ckpt_path}: sha256 {sha[:12]}... does not start with {named.group(1)}, the hash "
                                  "in its file name (a corrupt or altered download?)")
        state = _read_state_dict(ckpt_path)
    if state is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = torchvision.models.wide_resnet50_2(weights=None)
    else:
        # no random init to overwrite: build on the meta device and take the file's tensors (strict: all of them)
        with torch.device("meta"):
            model = torchvision.models.wide_resnet50_2(weights=None)
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            first = " ".join(str(exc).splitlines()[:4])
            raise CheckpointError(f"{ckpt_path}: does not fit architecture {CNN_NAME}: {first[:600]}") from exc
    model.eval().to(device)
    return LoadedCNN(model, CNN_NAME, str(ckpt_path) if ckpt_path else None, sha, seed)


@functools.lru_cache(maxsize=16)
def imagenet_transform(size: int) -> transforms.Compose:
    """Return the CNN transform ``Resize((s, s), bicubic)`` -> ``ToTensor`` -> ``Normalize(ImageNet mean/std)``.

    See the module docstring; memoised per size.

    Parameters
    ----------
    size : int
        Output side in px, >= 32.

    Returns
    -------
    torchvision.transforms.Compose
        Maps an RGB PIL image to a (3, size, size) float32 tensor.

    Raises
    ------
    ValueError
        When ``size`` is not an int >= 32.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 32:
        raise ValueError(f"size must be an int >= 32, got {size!r}")
    return transforms.Compose([
        transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    ])


def imagenet_preprocess(image: Image.Image | str | PathLike | ImageRecord, size: int = 224) -> torch.Tensor:
    """Turn an image into a ``(3, size, size)`` float32 CNN input (:func:`imagenet_transform`).

    Parameters
    ----------
    image : PIL.Image.Image or str or os.PathLike or ImageRecord
        A PIL image (converted to RGB if needed), a path or a record (read with :func:`zsad.data.load_image`).
    size : int, default 224
        Output side in px.

    Returns
    -------
    torch.Tensor
        (3, size, size) float32.

    Raises
    ------
    TypeError
        When ``image`` is none of the accepted types.
    ValueError
        When ``size`` is not an int >= 32.
    """
    if isinstance(image, ImageRecord):
        image = image.path
    if isinstance(image, (str, PathLike)):
        image = load_image(image)
    elif not isinstance(image, Image.Image):
        raise TypeError(f"imagenet_preprocess expects a PIL image, a path or an ImageRecord, "
                        f"got {type(image).__name__}")
    elif image.mode != "RGB":
        image = to_rgb(image)
    return imagenet_transform(size)(image)


def _check_layers(layers: Sequence[str]) -> tuple[str, ...]:
    layers = tuple(layers)
    if not layers or any(name not in LAYERS for name in layers) or len(set(layers)) != len(layers):
        raise ValueError(f"layers must be distinct names from {LAYERS}, got {layers!r}")
    return layers


@contextlib.contextmanager
def reproducible_convolutions(device: str | torch.device = "cpu"):
    """Within the block, CPU convolutions use torch's own kernel (im2col + one GEMM per image), not oneDNN or NNPACK.

    Their result does not depend on the number of torch threads or on the other images of the batch (oneDNN's does:
    see the module docstring), so every executor, thread count and cache state gives the same features. The flags
    are global to the process and restored on exit. A CUDA ``device`` changes nothing, and neither does CPU autocast
    (``autocast="bf16"``): torch's own bfloat16 convolution is about 20x slower than oneDNN's, so bf16 runs keep
    oneDNN and with it a thread-count dependence (bf16 differs from float32 far more than that anyway).

    Parameters
    ----------
    device : str or torch.device, default "cpu"
        The device the convolutions run on.

    Yields
    ------
    None
    """
    if torch.device(device).type != "cpu" or torch.is_autocast_enabled("cpu"):
        yield
        return
    mkldnn = torch.backends.mkldnn.enabled
    (nnpack,) = torch.backends.nnpack.set_flags(False)
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = mkldnn
        torch.backends.nnpack.set_flags(nnpack)


def _module_of(cnn) -> torch.nn.Module:
    """The ResNet module of a :class:`LoadedCNN` or the module itself; anything else is a clear TypeError."""
    model = cnn.model if isinstance(cnn, LoadedCNN) else cnn
    missing = [name for name in ("conv1", "bn1", "maxpool", *LAYERS) if not hasattr(model, name)]
    if not isinstance(model, torch.nn.Module) or missing:
        raise TypeError(f"expected what zsad.cnn.load_wide_resnet50 returns or a torchvision ResNet module, got "
                        f"{type(cnn).__name__}" + (f" without {', '.join(missing)}" if missing else ""))
    return model


def cnn_feature_maps(cnn: LoadedCNN | torch.nn.Module, pixels: torch.Tensor,
                     layers: Sequence[str] = ("layer2", "layer3")) -> dict[str, torch.Tensor]:
    """Return the raw feature maps of a batch; the forward stops at the deepest requested layer.

    On the CPU it runs under :func:`reproducible_convolutions` (the same bits for any thread count and batch).

    Parameters
    ----------
    cnn : LoadedCNN or torch.nn.Module
        What :func:`load_wide_resnet50` returns, or a torchvision ResNet module.
    pixels : torch.Tensor
        (N, 3, H, W) normalised input on the model's device.
    layers : sequence of str, default ("layer2", "layer3")
        Distinct names from ``LAYERS``.

    Returns
    -------
    dict of str to torch.Tensor
        ``{layer: (N, C, h, w)}``.

    Raises
    ------
    ValueError
        When ``layers`` is empty, repeats a name or names an unknown layer.
    TypeError
        When ``cnn`` is not a ResNet-style module.
    """
    layers = _check_layers(layers)
    model = _module_of(cnn)
    out = {}
    last = max(LAYERS.index(name) for name in layers)
    with reproducible_convolutions(pixels.device):
        x = model.maxpool(model.relu(model.bn1(model.conv1(pixels))))
        for name in LAYERS[: last + 1]:
            x = getattr(model, name)(x)
            if name in layers:
                out[name] = x
    return out


def _local_patch_features(maps: dict[str, torch.Tensor], layers: tuple[str, ...], dim: int) -> torch.Tensor:
    """Steps 1-3 of the module docstring: ``(N, h*w, dim)`` on the first layer's grid."""
    per_layer = dim // len(layers)
    h, w = maps[layers[0]].shape[-2:]
    parts = []
    for name in layers:
        f = F.avg_pool2d(maps[name].float(), kernel_size=3, stride=1, padding=1, count_include_pad=True)
        if f.shape[-2:] != (h, w):
            f = F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
        n, c = f.shape[:2]
        f = f.permute(0, 2, 3, 1).reshape(n * h * w, 1, c)
        if c != per_layer:
            f = F.adaptive_avg_pool1d(f, per_layer)
        parts.append(f.reshape(n, h * w, per_layer))
    return torch.cat(parts, dim=-1)


@torch.inference_mode()
def extract_patch_features(
    cnn: LoadedCNN | torch.nn.Module,
    records_or_pixels: Sequence[ImageRecord | str | PathLike | Image.Image] | torch.Tensor,
    *,
    size: int = 224,
    layers: Sequence[str] = ("layer2", "layer3"),
    dim: int = 1024,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "cnn features",
    cache=None,
    autocast: str | None = None,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Compute PatchCore's locally aware patch features of a list of images (module docstring).

    With a :class:`zsad.cache.FeatureCache` as ``cache``, each image (record, path or PIL image; a pixel tensor
    bypasses the cache) is looked up first (kind ``cnn``, keyed by weights, image content, size, ImageNet mean/std,
    layers and dim); the network runs only on the misses and the result is the same (bit-identical with float32
    storage).

    Parameters
    ----------
    cnn : LoadedCNN or torch.nn.Module
        What :func:`load_wide_resnet50` returns or a torchvision ResNet-style module itself (``conv1`` ...
        ``layer4``); a bare module is identified in cache keys by hashing its weights.
    records_or_pixels : sequence of ImageRecord, path or PIL.Image.Image, or torch.Tensor
        Images (read and preprocessed with :func:`imagenet_preprocess` at ``size``, one batch at a time), or an
        ``(N, 3, H, W)`` tensor that is already normalised (``size`` is then ignored). Must not be empty.
    size : int, default 224
        Input side in px.
    layers : sequence of str, default ("layer2", "layer3")
        The tapped layers; the first one's grid is the patch grid.
    dim : int, default 1024
        Feature dimension, a positive multiple of ``len(layers)`` (``dim / len(layers)`` channels per layer).
    batch_size : int, default 8
        Images per forward pass.
    progress : bool, default True
        Show a tqdm progress bar.
    desc : str, default "cnn features"
        Label of the progress bar.
    cache : zsad.cache.FeatureCache, optional
        Feature cache to look images up in and store the misses to.
    autocast : {None, "bf16", "fp16"}, optional
        As in :func:`zsad.features.extract_tokens`; part of the cache key.

    Returns
    -------
    features : torch.Tensor
        float32 ``(N, h*w, dim)`` on the CPU, positions in row-major order.
    grid : tuple of (int, int)
        The patch grid ``(h, w)`` (the first layer's; 28x28 for layer2 at 224 px).

    Raises
    ------
    ValueError
        On invalid ``layers``, ``dim``, ``batch_size`` or pixel shape, an empty input, or (with a cache) cached
        features that disagree on the grid.
    TypeError
        When ``cnn`` is not a ResNet-style module or an image is of an unsupported type.
    """
    from zsad.features import autocast_context

    layers = _check_layers(layers)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < len(layers) or dim % len(layers):
        raise ValueError(f"dim must be a positive multiple of the number of layers ({len(layers)}), got {dim!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    is_tensor = isinstance(records_or_pixels, torch.Tensor)
    if is_tensor and (records_or_pixels.ndim != 4 or records_or_pixels.shape[1] != 3):
        raise ValueError(f"pixels must be (N, 3, H, W), got {tuple(records_or_pixels.shape)}")
    items = records_or_pixels if is_tensor else list(records_or_pixels)
    if len(items) == 0:
        raise ValueError("no images to extract features from")
    if cache is not None and not is_tensor:
        return _cached_patch_features(cnn, items, cache, size=size, layers=layers, dim=dim, batch_size=batch_size,
                                      progress=progress, desc=desc, autocast=autocast)
    device = next(_module_of(cnn).parameters()).device
    parts, grid = [], None
    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        chunk = items[start:start + batch_size]
        pixels = chunk if is_tensor else torch.stack([imagenet_preprocess(item, size) for item in chunk])
        with autocast_context(device, autocast):
            maps = cnn_feature_maps(cnn, pixels.to(device), layers)
        grid = tuple(int(v) for v in maps[layers[0]].shape[-2:])
        parts.append(_local_patch_features(maps, layers, dim).cpu())
    return torch.cat(parts), grid


def _cached_patch_features(cnn: LoadedCNN, items: list, cache, *, size: int, layers: tuple[str, ...], dim: int,
                           batch_size: int, progress: bool, desc: str,
                           autocast: str | None) -> tuple[torch.Tensor, tuple[int, int]]:
    """:func:`extract_patch_features` through the feature cache: look up, compute the misses uncached, store."""
    imagenet_transform(size)  # validates size even when every image is a hit
    params = {"size": int(size), "preprocess": "imagenet_transform: square bicubic resize, ToTensor, Normalize",
              "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "layers": list(layers), "dim": int(dim),
              "patch": "avg_pool 3x3, bilinear to first layer, adaptive channel pool", "autocast": autocast}

    def compute(missing):
        fresh, grid = extract_patch_features(cnn, [items[i] for i in missing], size=size, layers=layers, dim=dim,
                                             batch_size=batch_size, progress=progress, desc=desc, autocast=autocast)
        return {"features": fresh, "grid": torch.tensor(grid, dtype=torch.int64).expand(len(missing), 2)}

    lk = cache.compute_missing("cnn", cnn, params, items, compute, names=("features", "grid"))
    grids = {tuple(int(v) for v in lk.get(i)["grid"]) for i in range(len(items))}
    if len(grids) != 1:  # cannot happen for one size and layer set; a guard against a foreign entry
        raise ValueError(f"cached CNN features disagree on the patch grid: {sorted(grids)}")
    return lk.stack("features"), grids.pop()
