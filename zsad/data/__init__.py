"""zsad.data: dataset layouts and pixels; never a model.

- records: ``ImageRecord`` (one image, label, mask file), ``DatasetError`` (bad input, names the path).
- loaders: ``load_dataset`` / ``list_classes`` for MVTec AD, VisA (split csv), magnetic tile and a plain folder.
- images: ``load_image``, ``preprocess`` (FADE's transform exactly), ``load_mask`` (FADE's recipe on lossless masks; one
  documented rule for every mask format), ``ImageWarning`` (a damaged file decoded anyway).
- synth: ``make_synthetic``, a seeded MVTec-layout tree with exact masks.
- fewshot: ``sample_references``, seeded reference choice (FADE's exactly by default).
"""

from .fewshot import SAMPLERS, reference_pool, sample_references
from .images import (CLIP_MEAN, CLIP_STD, LOSSY_MASK_THRESHOLD, ImageWarning, clip_transform, load_image, load_mask,
                     preprocess, read_image_size, to_rgb)
from .loaders import DATASET_KINDS, MASK_THRESHOLDS, class_prompt_name, has_masks, list_classes, load_dataset
from .records import IMAGE_EXTENSIONS, DatasetError, ImageRecord
from .synth import DEFECT_TYPES, make_synthetic

__all__ = [
    "ImageRecord",
    "DatasetError",
    "IMAGE_EXTENSIONS",
    "DATASET_KINDS",
    "MASK_THRESHOLDS",
    "list_classes",
    "load_dataset",
    "class_prompt_name",
    "has_masks",
    "CLIP_MEAN",
    "CLIP_STD",
    "load_image",
    "to_rgb",
    "read_image_size",
    "preprocess",
    "clip_transform",
    "load_mask",
    "ImageWarning",
    "LOSSY_MASK_THRESHOLD",
    "make_synthetic",
    "DEFECT_TYPES",
    "sample_references",
    "reference_pool",
    "SAMPLERS",
]
