"""Aspect-ratio buckets: every image trains at a size close to its own shape, never stretched.

An image is scaled by one factor until it covers its bucket, then centre-cropped to it, so at
most a thin strip is lost and circles stay circles. The crop offset is kept because SDXL is
conditioned on it (`crops_coords_top_left`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import LoraKitError


def make_buckets(resolution: int, step: int = 64, min_side: int | None = None,
                 max_side: int | None = None) -> list[tuple[int, int]]:
    """All (width, height) with sides multiples of `step`, area ≤ resolution², as large as allowed.

    For each width the tallest height that fits is taken, so every bucket has (within one step)
    the full pixel budget; the square resolution×resolution bucket is always present.
    """
    if resolution % step:
        raise LoraKitError(f"resolution {resolution} is not a multiple of the bucket step {step}")
    min_side = step * max(1, (min_side or resolution // 2) // step)
    max_side = max_side or resolution * 2
    area = resolution * resolution
    out = set()
    w = min_side
    while w <= max_side:
        h = min(max_side, (area // w) // step * step)
        if h >= min_side:
            out.add((w, h))
            out.add((h, w))
        w += step
    out.add((resolution, resolution))
    return sorted(out, key=lambda s: (s[0] / s[1], s[0]))


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to the image's (in log ratio, so 2:1 ~ 1:2)."""
    ar = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ar), -b[0] * b[1]))


@dataclass(frozen=True)
class Placement:
    """How one image becomes one training sample of `bucket` size."""

    original: tuple[int, int]  # (width, height) of the file
    resized: tuple[int, int]   # after the single uniform scale
    bucket: tuple[int, int]    # (width, height) trained at
    crop: tuple[int, int]      # (top, left) of the bucket inside the resized image

    def flipped_crop(self) -> tuple[int, int]:
        """The crop offset once the image is mirrored left-right."""
        top, left = self.crop
        return top, self.resized[0] - self.bucket[0] - left


def place(width: int, height: int, bucket: tuple[int, int]) -> Placement:
    """Scale uniformly so the image covers the bucket, then centre-crop the overflow."""
    bw, bh = bucket
    scale = max(bw / width, bh / height)
    rw, rh = max(bw, round(width * scale)), max(bh, round(height * scale))
    return Placement((width, height), (rw, rh), bucket, ((rh - bh) // 2, (rw - bw) // 2))


def check_size(path, width: int, height: int, bucket: tuple[int, int], max_upscale: float) -> None:
    """Refuse images that would have to be blown up more than `max_upscale` times."""
    scale = max(bucket[0] / width, bucket[1] / height)
    if scale > max_upscale:
        need_w, need_h = math.ceil(bucket[0] / max_upscale), math.ceil(bucket[1] / max_upscale)
        raise LoraKitError(
            f"image is {width}×{height}, too small for its {bucket[0]}×{bucket[1]} bucket (needs at least "
            f"{need_w}×{need_h}); use a larger image, a lower --resolution or a higher --max-upscale", path)


def no_upscale_placement(path, width: int, height: int, resolution: int, step: int) -> Placement:
    """sd-scripts' bucket_no_upscale (BucketManager.select_bucket): an image larger than the pixel budget
    is scaled down to it, a smaller one kept at its size; its bucket is that size rounded down to the step."""
    max_area = resolution * resolution
    ar = width / height

    def round_to_steps(x: float) -> int:
        x = int(x + 0.5)
        return x - x % step

    if width * height > max_area:
        rw = math.sqrt(max_area * ar)
        rh = max_area / rw
        bw_r = round_to_steps(rw)
        bh_in_wr = round_to_steps(bw_r / ar)
        bh_r = round_to_steps(rh)
        bw_in_hr = round_to_steps(bh_r * ar)
        if bh_in_wr and bh_r and abs(bw_r / bh_in_wr - ar) < abs(bw_in_hr / bh_r - ar):
            resized = (bw_r, int(bw_r / ar + 0.5))
        else:
            resized = (int(bh_r * ar + 0.5), bh_r)
    else:
        resized = (width, height)
    bucket = (resized[0] - resized[0] % step, resized[1] - resized[1] % step)
    if min(bucket) < step:
        raise LoraKitError(f"image is {width}×{height}: with bucket_no_upscale a side under the bucket step "
                           f"({step} px) leaves nothing to train", path)
    rw, rh = resized
    return Placement((width, height), resized, bucket, ((rh - bucket[1]) // 2, (rw - bucket[0]) // 2))
