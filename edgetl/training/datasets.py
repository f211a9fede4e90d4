"""The datasets a strategy sees: :class:`Split`, and torch datasets over :class:`edgetl.data.folder.Samples`, with augmentation on top of THE preprocessing.

Every image goes through :func:`edgetl.preprocess.read_image` and
:func:`edgetl.preprocess.prepare` (decode, ROI, resize mode, colour order) and
ends in :func:`edgetl.preprocess.normalize` — the exact calls evaluation, the
export's reference check and the device make. Random augmentation
(torchvision.transforms.v2) acts only on the prepared uint8 image in between,
so with augmentation off the training tensor equals the evaluation tensor bit
for bit. MixUp/CutMix mix whole batches: :func:`batch_mix`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgetl.api import InputSpec
from edgetl.data.folder import Samples
from edgetl.errors import ConfigError
from edgetl.preprocess import normalize, prepare, read_image


@dataclass
class Split:
    """One split of the run's data, as ``ctx.train``, ``ctx.val`` and ``ctx.unlabeled`` hold it.

    ``len(split)`` and ``split[i]`` go to ``dataset``: ``(x, y)`` with x a
    (3, H, W) float32 tensor normalised with the run's InputSpec and y the
    int label (-1 when unlabeled).

    Attributes:
        name: ``train``, ``val``, ``test`` or ``unlabeled``.
        dataset: the torch dataset, with the run's per-image augmentation for
            ``train`` (drawn from seed, epoch and index; call ``set_epoch``).
        plain: the same images never augmented (validation, feature statistics).
        labels: (N,) int class indices.
        paths: the image files, in order.
        masks: anomaly splits (val, test): each image's pixel-mask file, or None.
        kinds: anomaly splits: each image's own class folder (labels are 0 good, 1 anomaly).
    """

    name: str
    dataset: Any
    plain: Any
    labels: np.ndarray
    paths: list[Path]
    masks: list[Path | None] | None = None
    kinds: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i]


PER_IMAGE = ("hflip", "vflip", "rot90", "rotate", "color_jitter", "random_resized_crop", "cutout")
PER_BATCH = ("mixup", "cutmix")


def _rot90(img: torch.Tensor) -> torch.Tensor:
    """Rotate (C, H, W) by a random multiple of 90° (of 180° when H != W, to keep the shape)."""
    square = img.shape[-1] == img.shape[-2]
    k = int(torch.randint(0, 4, ()).item()) if square else 2 * int(torch.randint(0, 2, ()).item())
    return torch.rot90(img, k, dims=(-2, -1))


def build_transform(names: list[str], spec: InputSpec) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Compose the per-image augmentations in ``names`` for (3, H, W) uint8 tensors; None if none.

    The order is fixed whatever the config order: geometry (crop, flips,
    rotations), then photometric jitter, then CutOut.

    Raises:
        ConfigError: an unknown augmentation name.
    """
    from torchvision.transforms import v2

    for name in names:
        if name not in PER_IMAGE + PER_BATCH:
            raise ConfigError(f"augment: unknown augmentation '{name}' "
                              f"(known: {', '.join(PER_IMAGE + PER_BATCH)})")
    steps: list[Any] = []
    if "random_resized_crop" in names:
        steps.append(v2.RandomResizedCrop(tuple(spec.size), scale=(0.6, 1.0), antialias=True))
    if "hflip" in names:
        steps.append(v2.RandomHorizontalFlip())
    if "vflip" in names:
        steps.append(v2.RandomVerticalFlip())
    if "rot90" in names:
        steps.append(v2.Lambda(_rot90))
    if "rotate" in names:
        steps.append(v2.RandomRotation(15.0))
    if "color_jitter" in names:
        steps.append(v2.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.2, hue=0.02))
    if "cutout" in names:
        steps.append(v2.RandomErasing(p=0.5, scale=(0.02, 0.12), value=0))
    return v2.Compose(steps) if steps else None


class ImageDataset(torch.utils.data.Dataset):
    """(3, H, W) float32 normalised tensors and integer labels for ``samples``.

    Args:
        samples: images and labels (see :mod:`edgetl.data.folder`).
        spec: the InputSpec; with tiling, the first tile is used.
        augment: augmentation names of the run config (batch-level ones —
            mixup, cutmix — are ignored here; see :func:`batch_mix`).
        train: augment only when True.
        seed: augmentation is drawn from (seed, epoch, index), so a run is
            reproducible whatever the number of DataLoader workers; call
            :meth:`set_epoch` each epoch for fresh draws.
    """

    def __init__(self, samples: Samples, spec: InputSpec, augment: list[str] | None = None,
                 train: bool = False, seed: int = 0):
        self.samples, self.spec, self.train, self.seed = samples, spec, train, seed
        self.augment = list(augment or [])
        self.transform = build_transform(self.augment, spec) if train else None
        if not train:
            build_transform(self.augment, spec)  # validate names either way
        self.epoch = 0

    @property
    def classes(self) -> list[str]:
        return self.samples.classes

    @property
    def targets(self) -> list[int]:
        return self.samples.labels

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples.items)

    def image(self, i: int) -> np.ndarray:
        """Sample ``i`` decoded and prepared: (h, w, 3) uint8 in the network's colour order."""
        return prepare(read_image(self.samples.items[i].path), self.spec)[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.image(i)
        if self.transform is not None:
            key = zlib.crc32(f"{self.seed}:{self.epoch}:{i}".encode())
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(key)
                out = self.transform(torch.from_numpy(image).permute(2, 0, 1).contiguous())
            image = np.ascontiguousarray(out.permute(1, 2, 0).numpy())
        return torch.from_numpy(normalize(image, self.spec)), self.samples.items[i].label


Mix = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""A batch mix: ``(x (N,3,H,W), y (N,) int) -> (x, y_soft (N, K) float)``."""


def batch_mix(names: list[str], num_classes: int) -> Mix | None:
    """MixUp and/or CutMix for a batch: ``(x (N,3,H,W), y (N,) int) -> (x, y_soft (N, K) float)``.

    With both named, each batch picks one at random. None when neither is named.
    """
    from torchvision.transforms import v2

    chosen = []
    if "cutmix" in names:
        chosen.append(v2.CutMix(num_classes=num_classes, alpha=1.0))
    if "mixup" in names:
        chosen.append(v2.MixUp(num_classes=num_classes, alpha=0.2))
    if not chosen:
        return None
    mix = chosen[0] if len(chosen) == 1 else v2.RandomChoice(chosen)

    def apply(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mixed, soft = mix(x, y)
        return mixed, soft

    return apply


class _Joined(torch.utils.data.ConcatDataset):
    """Datasets one after another; ``set_epoch`` reaches each (fresh augmentation draws per epoch)."""

    def set_epoch(self, epoch: int) -> None:
        for part in self.datasets:
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)


def with_images(ctx: Any, images: list[tuple[Path, int]], split: Split | None = None) -> Split:
    """``split`` (default ``ctx.train``) followed by ``images``, ``(path, class index)`` pairs.

    The added images go through the same preprocessing and per-image
    augmentation as the split (``ctx.input``, the run's ``augment``; their
    draws are seeded apart from the split's). Pass the result as
    ``fit_epochs(..., train=...)``, e.g. new data plus a rehearsal buffer.
    Batch mixing (mixup, cutmix) is applied to ``ctx.train`` only.
    """
    from edgetl.data.folder import Sample, Samples

    split = ctx.train if split is None else split
    if not images:
        return split
    samples = Samples([Sample(Path(p), int(y)) for p, y in images], list(ctx.labels))
    geometric = [a for a in ctx.config.augment if a not in PER_BATCH]
    seed = ctx.config.train.seed + 1
    plain = ImageDataset(samples, ctx.input, augment=[], train=False, seed=seed)
    augmented = ImageDataset(samples, ctx.input, augment=geometric, train=True, seed=seed) if geometric else plain
    labels = np.concatenate([split.labels, np.asarray([y for _, y in images], dtype=int)])
    return Split(split.name, _Joined([split.dataset, augmented]), _Joined([split.plain, plain]), labels,
                 list(split.paths) + [Path(p) for p, _ in images])
