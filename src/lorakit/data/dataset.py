"""The training set: items placed in buckets, a batch order that is a pure function of the seed,
and per-step augmentation (caption shuffle/dropout, flip) drawn from a per-step generator.

Because the order and every random choice depend only on (seed, micro-step, process), a
resumed run sees exactly the batches and captions the uninterrupted run would have seen, and
the processes of a distributed run read disjoint batches without talking to each other.
Written here rather than with a torch DataLoader + sampler: bucketed batches and skipping to
an arbitrary micro-step are what such a sampler cannot express.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .buckets import Placement, check_size, make_buckets, nearest_bucket, no_upscale_placement, place
from .captions import augment, tag_frequency, with_trigger
from .folders import ImageItem, Subset, load_rgb, scan


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across Python runs (unlike hash())."""
    digest = hashlib.blake2b(repr(tuple(int(p) for p in parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFFFFFFFFFF


@dataclass
class BucketSettings:
    resolution: int = 512
    step: int = 64
    enable: bool = True
    min_side: int | None = None
    max_side: int | None = None
    max_upscale: float = 2.0
    no_upscale: bool = False  # sd-scripts' bucket_no_upscale: each image's own bucket, never enlarged


class BatchPlan:
    """Epochs of bucket-pure batches, each epoch shuffled by (seed, epoch); a global stream of
    batches that process r of W reads at positions r, r+W, r+2W…"""

    def __init__(self, buckets: list[tuple[int, int]], repeats: list[int], batch_size: int, seed: int):
        self.buckets, self.repeats, self.batch_size, self.seed = buckets, repeats, batch_size, seed
        self._epoch_cache: dict[int, list[list[int]]] = {}
        self.batches_per_epoch = len(self.epoch(0))

    def epoch(self, e: int) -> list[list[int]]:
        if e not in self._epoch_cache:
            rng = random.Random(mix_seed(self.seed, e, 0xDA7A))
            order = [i for i, r in enumerate(self.repeats) for _ in range(r)]
            rng.shuffle(order)
            by_bucket: dict[tuple[int, int], list[int]] = {}
            for i in order:
                by_bucket.setdefault(self.buckets[i], []).append(i)
            batches = [idx[k:k + self.batch_size] for _, idx in sorted(by_bucket.items())
                       for k in range(0, len(idx), self.batch_size)]
            rng.shuffle(batches)
            self._epoch_cache = {e: batches}  # one epoch at a time is all a run needs
        return self._epoch_cache[e]

    def at(self, micro_step: int, rank: int = 0, world: int = 1) -> tuple[int, list[int]]:
        """(epoch, item indices) of the batch process `rank` trains on at `micro_step`."""
        g = micro_step * world + rank
        e, k = divmod(g, self.batches_per_epoch)
        return e, self.epoch(e)[k]


@dataclass
class Sample:
    """One image as one step sees it."""

    item: ImageItem
    placement: Placement
    caption: str
    flip: bool
    offset: tuple[int, int] | None = None  # (top, left) of a random crop (sd-scripts' random_crop)
    color: tuple[str, float] | None = None  # sd-scripts' color_aug drawn for this step: ("hue", shift) or ("gamma", g)

    @property
    def crop(self) -> tuple[int, int]:
        placement = self.placement if self.offset is None else replace(self.placement, crop=self.offset)
        return placement.flipped_crop() if self.flip else placement.crop


class TrainingData:
    """Instance images (trigger prepended) and, for prior preservation, regularisation images."""

    def __init__(self, subsets: list[Subset], buckets: BucketSettings, *, batch_size: int = 1,
                 trigger: str | None = None, seed: int = 0, validation: list[ImageItem] = ()):
        """validation: held-out images (lorakit.data.holdout); training never sees them, even where they
        lie in its folders. They are placed in buckets and captioned as training images are."""
        self.settings = buckets
        self.trigger = trigger or None
        self.seed = seed
        self.subsets = subsets
        held = {Path(it.path).resolve() for it in validation}
        items = [it for s in subsets for it in scan(s) if it.path.resolve() not in held]
        self.validation = [ImageItem(it.path, it.caption, it.subset, it.size) for it in validation]
        for it in items + self.validation:  # regularisation images keep their own caption (or class prompt)
            if not it.subset.is_reg:
                it.caption = with_trigger(it.caption, self.trigger)
        if buckets.enable:
            self.bucket_list = make_buckets(buckets.resolution, buckets.step, buckets.min_side, buckets.max_side)
        else:
            self.bucket_list = [(buckets.resolution, buckets.resolution)]
        self.instance = [it for it in items if not it.subset.is_reg]
        self.reg = [it for it in items if it.subset.is_reg]
        if not self.instance:
            raise_no_instance(subsets)
        self.placements: dict[Path, Placement] = {}
        for it in items + self.validation:
            if buckets.enable and buckets.no_upscale:
                self.placements[it.path] = no_upscale_placement(it.path, *it.size, buckets.resolution, buckets.step)
                continue
            b = nearest_bucket(*it.size, self.bucket_list)
            check_size(it.path, *it.size, b, buckets.max_upscale)
            self.placements[it.path] = place(*it.size, b)
        self.plan = self._plan(self.instance, batch_size, 0)
        self.reg_plan = self._plan(self.reg, batch_size, 1) if self.reg else None

    def _plan(self, items: list[ImageItem], batch_size: int, salt: int) -> BatchPlan:
        return BatchPlan([self.placements[it.path].bucket for it in items], [it.subset.repeats for it in items],
                         batch_size, mix_seed(self.seed, salt))

    # what one step trains on -----------------------------------------------------------------
    def batch(self, micro_step: int, rank: int = 0, world: int = 1) -> tuple[int, list[Sample], list[Sample]]:
        """(epoch, instance samples, regularisation samples) for one micro-step of one process."""
        epoch, idx = self.plan.at(micro_step, rank, world)
        inst = [self._sample(self.instance[i], micro_step, rank, k) for k, i in enumerate(idx)]
        reg = []
        if self.reg_plan is not None:
            _, ridx = self.reg_plan.at(micro_step, rank, world)
            reg = [self._sample(self.reg[i], micro_step, rank, 1000 + k) for k, i in enumerate(ridx)]
        return epoch, inst, reg

    def _sample(self, item: ImageItem, micro_step: int, rank: int, slot: int) -> Sample:
        rng = random.Random(mix_seed(self.seed, micro_step, rank, slot, 0xCA9))
        s = item.subset
        caption = self._caption(item, rng)
        flip = bool(s.flip and rng.random() < 0.5)
        placement = self.placements[item.path]
        offset = color = None
        if s.random_crop:  # train_util.trim_and_resize_if_required: any offset, each step
            rw, rh = placement.resized
            bw, bh = placement.bucket
            offset = (rng.randint(0, rh - bh), rng.randint(0, rw - bw))
        if s.color_aug:
            color = draw_color_aug(rng)
        return Sample(item, placement, caption, flip, offset, color)

    def _caption(self, item: ImageItem, rng: random.Random) -> str:
        s = item.subset
        return augment(item.caption, rng, trigger=None if s.is_reg else self.trigger, shuffle=s.shuffle_caption,
                       keep_tokens=s.keep_tokens, dropout=s.caption_dropout, tag_dropout=s.caption_tag_dropout,
                       keep_tokens_separator=s.keep_tokens_separator, secondary_separator=s.secondary_separator,
                       wildcard=s.enable_wildcard)

    # facts for metadata and caches -----------------------------------------------------------
    def variants(self) -> list[tuple[ImageItem, Placement, bool]]:
        """Every (image, placement, flipped) a run can train on: what a latent cache must hold."""
        out = []
        for it in self.instance + self.reg:
            out.append((it, self.placements[it.path], False))
            if it.subset.flip:
                out.append((it, self.placements[it.path], True))
        out += [(it, self.placements[it.path], False) for it in self.validation]  # validated unflipped
        return out

    def fixed_captions(self) -> list[str] | None:
        """The only captions training can see, or None when shuffle/dropout make them vary."""
        if any(s.shuffle_caption or s.caption_dropout or s.caption_tag_dropout or s.enable_wildcard
               for s in (it.subset for it in self.instance + self.reg)):
            return None
        rng = random.Random(0)  # draws nothing: the captions are fixed
        return sorted({self._caption(it, rng) for it in self.instance + self.reg + self.validation})

    def varies_pixels(self) -> bool:
        """Whether an image differs from step to step beyond its flip (sd-scripts' random_crop, color_aug):
        then no latent can be cached."""
        return any(s.random_crop or s.color_aug for s in self.subsets)

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for s in self.subsets:
            caps = [it.caption for it in self.instance + self.reg if it.subset is s]
            out[s.name] = tag_frequency(caps)
        return out

    def bucket_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for it in self.instance:
            w, h = self.placements[it.path].bucket
            out[f"{w}x{h}"] = out.get(f"{w}x{h}", 0) + it.subset.repeats
        return dict(sorted(out.items()))

    @property
    def num_images(self) -> int:
        return len(self.instance)

    @property
    def images_per_epoch(self) -> int:
        return sum(it.subset.repeats for it in self.instance)


def raise_no_instance(subsets: list[Subset]):
    from ..errors import LoraKitError

    raise LoraKitError("the dataset has only regularisation (is_reg) images; nothing to learn from",
                       subsets[0].dir if subsets else None)


def pixels(sample_or_item, placement: Placement | None = None, flip: bool | None = None) -> torch.Tensor:
    """The image resized once (uniform scale), centre-cropped to its bucket, maybe mirrored: [3, H, W] in [-1, 1]."""
    color = None
    if isinstance(sample_or_item, Sample):
        item, placement, flip = sample_or_item.item, sample_or_item.placement, sample_or_item.flip
        if sample_or_item.offset is not None:
            placement = replace(placement, crop=sample_or_item.offset)
        color = sample_or_item.color
    else:
        item = sample_or_item
    im = load_rgb(item.path)
    rw, rh = placement.resized
    if (rw, rh) != im.size:
        im = im.resize((rw, rh), Image.Resampling.LANCZOS)
    top, left = placement.crop
    bw, bh = placement.bucket
    im = im.crop((left, top, left + bw, top + bh))
    if color is not None:
        im = apply_color_aug(im, color)
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def draw_color_aug(rng: random.Random) -> tuple[str, float] | None:
    """sd-scripts' AugHelper.color_aug: a third of the steps, half a hue shift of up to ±8 (OpenCV's
    0–180 hue scale), half a gamma in [0.95, 1.05]; otherwise the image as it is."""
    if rng.random() > 0.33:
        return None
    if rng.random() > 0.5:
        return ("hue", rng.uniform(-8, 8))
    return ("gamma", rng.uniform(0.95, 1.05))


def apply_color_aug(im: Image.Image, color: tuple[str, float]) -> Image.Image:
    """As sd-scripts applies it: the gamma to the 0–255 values themselves (x ** g, clipped), the hue shift
    on the RGB array read as BGR (its cv2.COLOR_BGR2HSV on a PIL image's array)."""
    kind, value = color
    arr = np.asarray(im)
    if kind == "gamma":
        return Image.fromarray(np.clip(arr.astype(np.float64) ** value, 0, 255).astype(np.uint8))
    hsv = np.asarray(Image.fromarray(np.ascontiguousarray(arr[..., ::-1])).convert("HSV")).copy()
    shift = round((value % 180) * 256 / 180)  # OpenCV hue units (0–180) on PIL's 0–256 scale
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + shift) % 256).astype(np.uint8)
    bgr = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
    return Image.fromarray(np.ascontiguousarray(bgr[..., ::-1]))
