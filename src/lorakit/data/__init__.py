"""Training data: folders and captions, the TOML dataset config, buckets, caches."""

from .buckets import Placement, make_buckets, nearest_bucket, place
from .cache import TensorStore, cache_key
from .captions import augment, tag_frequency, with_trigger
from .config import DatasetConfig, load_dataset_config
from .dataset import BatchPlan, BucketSettings, Sample, TrainingData, mix_seed, pixels
from .folders import IMAGE_EXTS, ImageItem, Subset, scan, subsets_in

__all__ = ["Placement", "make_buckets", "nearest_bucket", "place", "TensorStore", "cache_key", "augment",
           "tag_frequency", "with_trigger", "DatasetConfig", "load_dataset_config", "BatchPlan", "BucketSettings",
           "Sample", "TrainingData", "mix_seed", "pixels", "IMAGE_EXTS", "ImageItem", "Subset", "scan",
           "subsets_in"]
