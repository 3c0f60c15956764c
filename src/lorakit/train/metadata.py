"""The `ss_*` training keys kohya writes, so A1111/Civitai show how a LoRA was trained."""

from __future__ import annotations

import json
import uuid
from typing import Any

from ..data.dataset import TrainingData
from .config import TrainConfig


def training_fields(cfg: TrainConfig, data: TrainingData, *, family: str, prediction_type: str, step: int,
                    epoch: int, num_processes: int, started_at: float, finished_at: float | None,
                    session_id: str | None = None, skipped_steps: list[int] = (),
                    mixed_precision: str | None = None) -> dict[str, Any]:
    """Hyperparameters and dataset facts, keyed without the `ss_` prefix (build_metadata adds it)."""
    te_lr = cfg.text_encoder_lr if cfg.text_encoder_lr is not None else cfg.lr
    dirs = {s.name: {"n_repeats": s.repeats, "img_count": sum(1 for it in data.instance if it.subset is s)}
            for s in data.subsets if not s.is_reg}
    reg_dirs = {s.name: {"n_repeats": s.repeats, "img_count": sum(1 for it in data.reg if it.subset is s)}
                for s in data.subsets if s.is_reg}
    subsets = data.subsets
    return {
        "session_id": session_id or uuid.uuid4().hex[:12],
        "training_started_at": f"{started_at:.3f}",
        "training_finished_at": "" if finished_at is None else f"{finished_at:.3f}",
        "sd_model_name": str(cfg.model),
        "learning_rate": cfg.lr,
        "unet_lr": cfg.lr if cfg.train_unet else 0.0,
        "text_encoder_lr": te_lr if cfg.train_text_encoder else 0.0,
        "network_train_unet_only": not cfg.train_text_encoder,
        "network_dropout": cfg.dropout,
        "optimizer": cfg.optimizer,
        "lr_scheduler": cfg.scheduler,
        "lr_warmup_steps": cfg.warmup_steps,
        "max_grad_norm": cfg.max_grad_norm,
        "steps": step,
        "max_train_steps": cfg.steps,
        "epoch": epoch,
        "num_train_images": data.images_per_epoch,
        "num_reg_images": len(data.reg),
        "num_batches_per_epoch": data.plan.batches_per_epoch,
        "batch_size_per_device": cfg.batch_size,
        "total_batch_size": cfg.batch_size * cfg.grad_accum * num_processes,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "mixed_precision": mixed_precision or cfg.mixed_precision,  # what ran: auto resolved
        "lorakit_base_precision": cfg.base_precision,
        "seed": cfg.seed,
        "resolution": f"({cfg.resolution}, {cfg.resolution})",
        "enable_bucket": cfg.bucket,
        "min_bucket_reso": min(min(b) for b in data.bucket_list),
        "max_bucket_reso": max(max(b) for b in data.bucket_list),
        "bucket_info": json.dumps({"buckets": data.bucket_counts()}),
        "keep_tokens": max((s.keep_tokens for s in subsets), default=0),
        "shuffle_caption": any(s.shuffle_caption for s in subsets),
        "caption_dropout_rate": max((s.caption_dropout for s in subsets), default=0.0),
        "flip_aug": any(s.flip for s in subsets),
        "noise_offset": cfg.noise_offset,
        "min_snr_gamma": cfg.min_snr_gamma,
        "prior_loss_weight": cfg.prior_weight,
        "lorakit_prior_target": cfg.prior_target,
        "v_parameterization": prediction_type == "v_prediction",
        "cache_latents": cfg.cache_latents != "none",
        "dataset_dirs": json.dumps(dirs),
        "reg_dataset_dirs": json.dumps(reg_dirs),
        "lorakit_l1_penalty": cfg.l1_penalty,
        "lorakit_l2_penalty": cfg.l2_penalty,
        "lorakit_trigger": cfg.trigger or "",
        "lorakit_class_prompt": cfg.class_prompt or "",
        "lorakit_nan_policy": cfg.nan_policy,
        "lorakit_skipped_steps": len(skipped_steps),  # optimizer steps skipped for a NaN/Inf loss
        "lorakit_skipped_at": json.dumps(list(skipped_steps)),
    }


def network_args(cfg: TrainConfig) -> dict[str, str]:
    """ss_network_args as kohya spells them (strings)."""
    spec = cfg.network_spec()
    args = {"preset": cfg.preset}
    if not spec.uses_lycoris:  # LyCORIS' modules initialise as LyCORIS does
        args["init"] = cfg.init
    args.update({k: str(v) for k, v in spec.args.items()})  # --rank-dropout & co. folded in
    return args
