"""sd-scripts' training options, as data: how its argparse reads each one and the lorakit option it
sets, the ones without effect here, and the ones lorakit refuses with what to use instead.

Read from kohya-ss/sd-scripts at commit 48d368fa557731ad0488c07304dfeba8c07910eb (the files
kohya_options.py names). A module of its own, importing nothing of lorakit's training, so that the
training config can name an sd-scripts key in its errors without importing the translation.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

SD_SCRIPTS = "kohya-ss/sd-scripts@48d368fa557731ad0488c07304dfeba8c07910eb"


@dataclass(frozen=True)
class Kohya:
    """How sd-scripts' argparse reads an option (`kind`), and the lorakit option it sets."""

    kind: str  # flag (store_true), str, int, float, int_or_float, list (nargs=*), float_list
    option: str | None = None  # lorakit option it sets as is; None: a rule in `translate` reads it


def _opt(kind, option=None):
    return Kohya(kind, option)


# sd-scripts dest → how lorakit takes it
TABLE: dict[str, Kohya] = {
    # model
    "pretrained_model_name_or_path": _opt("str", "model"),
    "v_parameterization": _opt("flag"),  # → prediction_type v_prediction
    "v2": _opt("flag"),  # lorakit reads SD 2.x from the model itself
    "model_type": _opt("str"),  # flux or chroma: lorakit reads it from the model itself
    # data
    "train_data_dir": _opt("str", "data"),
    "dataset_config": _opt("str", "data"),
    "shuffle_caption": _opt("flag", "shuffle_caption"),
    "caption_extension": _opt("str", "caption_ext"),
    "caption_extention": _opt("str", "caption_ext"),  # sd-scripts' old misspelling, still accepted there
    "keep_tokens": _opt("int", "keep_tokens"),
    "flip_aug": _opt("flag", "flip"),
    "caption_dropout_rate": _opt("float", "caption_dropout"),
    "resolution": _opt("str"),  # "W,H" or "N"
    "enable_bucket": _opt("flag", "bucket"),
    "bucket_no_upscale": _opt("flag", "bucket_no_upscale"),
    "min_bucket_reso": _opt("int", "min_bucket_side"),
    "max_bucket_reso": _opt("int", "max_bucket_side"),
    "bucket_reso_steps": _opt("int", "bucket_step"),
    "cache_latents": _opt("flag"),
    "cache_latents_to_disk": _opt("flag"),
    "cache_text_encoder_outputs": _opt("flag"),
    "cache_text_encoder_outputs_to_disk": _opt("flag"),
    "train_batch_size": _opt("int", "batch_size"),
    "validation_split": _opt("float", "validation_split"),
    "prior_loss_weight": _opt("float", "prior_weight"),
    "clip_skip": _opt("int", "clip_skip"),
    "max_token_length": _opt("int"),  # 75 (None) only
    # network
    "network_module": _opt("str"),
    "network_args": _opt("list"),
    "network_dim": _opt("int", "rank"),
    "network_alpha": _opt("float", "alpha"),
    "network_dropout": _opt("float", "dropout"),
    "network_weights": _opt("str", "network_weights"),
    "dim_from_weights": _opt("flag", "dim_from_weights"),
    "network_train_unet_only": _opt("flag"),
    "network_train_text_encoder_only": _opt("flag"),
    # optimizer
    "optimizer_type": _opt("str"),
    "use_8bit_adam": _opt("flag"),
    "use_lion_optimizer": _opt("flag"),
    "optimizer_args": _opt("list"),
    "learning_rate": _opt("float"),
    "unet_lr": _opt("float"),
    "text_encoder_lr": _opt("float_list"),
    "max_grad_norm": _opt("float", "max_grad_norm"),
    "lr_scheduler": _opt("str"),
    "lr_warmup_steps": _opt("int_or_float"),
    "lr_scheduler_num_cycles": _opt("int", "scheduler_cycles"),
    "lr_scheduler_power": _opt("float", "scheduler_power"),
    # loss
    "noise_offset": _opt("float", "noise_offset"),
    "min_snr_gamma": _opt("float", "min_snr_gamma"),
    "loss_type": _opt("str", "loss_type"),
    "huber_c": _opt("float", "huber_c"),
    "huber_schedule": _opt("str", "huber_schedule"),
    "huber_scale": _opt("float", "huber_scale"),
    "weighting_scheme": _opt("str", "weighting_scheme"),
    "guidance_scale": _opt("float", "guidance_scale"),
    "timestep_sampling": _opt("str"),
    "sigmoid_scale": _opt("float"),
    "discrete_flow_shift": _opt("float"),
    "model_prediction_type": _opt("str"),
    # run
    "max_train_steps": _opt("int", "steps"),
    "max_train_epochs": _opt("int", "epochs"),
    "gradient_accumulation_steps": _opt("int", "grad_accum"),
    "mixed_precision": _opt("str", "mixed_precision"),
    "fp8_base": _opt("flag"),
    "gradient_checkpointing": _opt("flag", "gradient_checkpointing"),
    "blocks_to_swap": _opt("int", "blocks_to_swap"),
    "sdpa": _opt("flag"),
    "xformers": _opt("flag"),
    "mem_eff_attn": _opt("flag"),
    "seed": _opt("int", "seed"),
    # output
    "output_dir": _opt("str"),
    "output_name": _opt("str"),
    "save_model_as": _opt("str"),  # safetensors only
    "save_precision": _opt("str"),
    "save_every_n_steps": _opt("int", "save_every"),
    "save_every_n_epochs": _opt("int", "save_every_epochs"),
    "training_comment": _opt("str", "comment"),
    "sample_every_n_steps": _opt("int", "sample_every"),
    "sample_prompts": _opt("str", "sample_prompts"),
    "log_with": _opt("str"),  # tensorboard only
    # read here, not options of a run
    "config_file": _opt("str"),
}

# accepted and reported once: they change how fast or where things go, not what is trained
NO_EFFECT: dict[str, tuple[str, str]] = {
    "max_data_loader_n_workers": ("int", "lorakit reads images without DataLoader workers"),
    "persistent_data_loader_workers": ("flag", "lorakit reads images without DataLoader workers"),
    "vae_batch_size": ("int", "lorakit encodes latents one image at a time"),
    "text_encoder_batch_size": ("int", "lorakit encodes captions in training batches"),
    "lowram": ("flag", "lorakit places weights itself"),
    "highvram": ("flag", "lorakit places weights itself"),
    "skip_cache_check": ("flag", "lorakit's cache is keyed by content"),
    "cache_info": ("flag", "lorakit's cache is keyed by content"),
    "disable_mmap_load_safetensors": ("flag", "lorakit reads safetensors as it sees fit"),
    "logging_dir": ("str", "lorakit logs to RUN_DIR/logs (--run-dir)"),
    "log_prefix": ("str", "lorakit logs to RUN_DIR/logs (--run-dir)"),
    "log_config": ("flag", "the resolved config is in RUN_DIR"),
    "console_log_level": ("str", "lorakit prints what it does"),
    "console_log_file": ("str", "lorakit prints what it does"),
    "console_log_simple": ("flag", "lorakit prints what it does"),
    "no_half_vae": ("flag", "lorakit runs the VAE in fp32 for latents"),
}

_ENCODERS = ("lorakit reads a single-file model's text encoders and VAE from one diffusers folder: "
             "--text-encoders DIR")
_NONE = "lorakit has no equivalent"
_SUBSET = "lorakit reads it from a --dataset_config TOML (general, dataset or subset key of the same name)"
# sd-scripts options lorakit does not have: what to use instead
UNSUPPORTED: dict[str, str] = {
    "clip_l": _ENCODERS, "clip_g": _ENCODERS, "t5xxl": _ENCODERS, "ae": _ENCODERS,
    "vae": "lorakit uses the model's own VAE",
    **{k: _SUBSET for k in ("caption_prefix", "caption_suffix", "keep_tokens_separator", "secondary_separator",
                            "enable_wildcard", "caption_tag_dropout_rate", "color_aug", "random_crop")},
    "reg_data_dir": ("give the regularisation images as an `is_reg = true` subset of a --dataset_config TOML, "
                     "or --class-data DIR with --class-prompt TEXT"),
    "in_json": "lorakit reads captions from files beside the images (no fine-tuning metadata JSON)",
    "resume": "lorakit resumes its own states: --resume RUN_DIR",
    "output_config": "--print-config writes the resolved config",
    "sample_sampler": "training samples use the model's own scheduler; `lorakit generate --sampler` chooses one",
    "sample_every_n_epochs": "--sample-every N (steps)",
    "sample_at_first": _NONE,
    "fp8_base_unet": "--base-precision fp8 stores the denoiser and T5 in fp8 together",
    "full_fp16": "lorakit keeps the LoRA and optimizer in fp32 (--mixed-precision fp16)",
    "full_bf16": "lorakit keeps the LoRA and optimizer in fp32 (--mixed-precision bf16)",
    "t5xxl_max_token_length": "lorakit uses 512 T5 tokens on Flux.1 (sd-scripts' dev default) and 77 on SD 3.x",
    "apply_t5_attn_mask": _NONE,
    "lr_scheduler_type": "--scheduler: constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial",
    "lr_scheduler_args": "--scheduler-cycles and --scheduler-power",
    "training_shift": "lorakit uses the shift of the model's own scheduler config",
    "scale_weight_norms": _NONE,
    "base_weights": "merge first with `lorakit merge`, then train on the merged model",
    "base_weights_multiplier": "merge first with `lorakit merge`, then train on the merged model",
    "log_tracker_name": "lorakit logs to TensorBoard", "log_tracker_config": "lorakit logs to TensorBoard",
    "wandb_run_name": "lorakit logs to TensorBoard", "wandb_api_key": "lorakit logs to TensorBoard",
    "caption_separator": "lorakit separates caption tags with ','",
    "save_state": "every --save-every N steps lorakit saves a resume state beside the LoRA",
    "save_state_on_train_end": "lorakit's final resume state is in RUN_DIR",
    "save_last_n_steps": "--keep-states N", "save_last_n_steps_state": "--keep-states N",
    "save_last_n_epochs": "--keep-states N", "save_last_n_epochs_state": "--keep-states N",
    "validate_every_n_steps": "--evaluate-every N", "validation_seed": "--seed (it chooses the held-out images)",
}


# every other option of sd-scripts' four network trainers (at the commit above): refused, with what
# to use instead where UNSUPPORTED names it, else as having no equivalent
SD_SCRIPTS_ONLY = frozenset("""
    adaptive_noise_scale ae alpha_mask apply_lg_attn_mask apply_t5_attn_mask async_upload base_weights
    base_weights_multiplier caption_dropout_every_n_epochs caption_prefix caption_separator caption_suffix
    caption_tag_dropout_rate clip_g clip_g_dropout_rate clip_l clip_l_dropout_rate color_aug
    conditioning_data_dir controlnet_model_name_or_path cpu_offload_checkpointing dataset_class dataset_repeats
    ddp_gradient_as_bucket_view ddp_static_graph ddp_timeout debiased_estimation_loss debug_dataset deepspeed
    dynamo_backend enable_scaled_pos_embed enable_wildcard face_crop_aug_range fp16_master_weights_and_gradients
    fp8_base_unet full_bf16 full_fp16 fused_backward_pass huggingface_path_in_repo
    huggingface_repo_id huggingface_repo_type huggingface_repo_visibility huggingface_token in_json
    initial_epoch initial_step ip_noise_gamma ip_noise_gamma_random_strength keep_tokens_separator
    log_tracker_config log_tracker_name logit_mean logit_std lr_decay_steps lr_scheduler_args
    lr_scheduler_min_lr_ratio lr_scheduler_timescale lr_scheduler_type masked_loss max_timestep
    max_validation_steps metadata_author metadata_description metadata_is_negative_embedding metadata_license
    metadata_merged_from metadata_preprocessor metadata_tags metadata_thumbnail metadata_title
    metadata_trigger_phrase metadata_usage_hint min_timestep mode_scale multires_noise_discount
    multires_noise_iterations no_metadata noise_offset_random_strength offload_optimizer_device
    offload_optimizer_nvme_path offload_param_device offload_param_nvme_path output_config
    pos_emb_random_crop_rate random_crop reg_data_dir resize_interpolation resume resume_from_huggingface
    sample_at_first sample_every_n_epochs sample_sampler save_clip save_last_n_epochs save_last_n_epochs_state
    save_last_n_steps save_last_n_steps_state save_n_epoch_ratio save_state save_state_on_train_end
    save_state_to_huggingface save_t5xxl scale_v_pred_loss_like_noise_pred scale_weight_norms
    secondary_separator skip_until_initial_step split_mode t5_dropout_rate t5xxl t5xxl_device t5xxl_dtype
    t5xxl_max_token_length token_warmup_min token_warmup_step tokenizer_cache_dir torch_compile training_shift
    v_pred_like_loss vae validate_every_n_epochs validate_every_n_steps validation_seed wandb_api_key
    wandb_run_name weighted_captions zero3_init_flag zero3_save_16bit_model zero_stage zero_terminal_snr
""".split())



def config_hint(key: str, options: set[str]) -> str:
    """What a lorakit TOML or option dict's unknown key `key` is: sd-scripts' name of one of lorakit's
    `options`, or a typo of one (difflib over the names, '-' and '_' alike)."""
    row = TABLE.get(key)
    if row is not None and row.option is not None and row.option in options:
        return f" (sd-scripts' name of {row.option}; sd-scripts configs are read with --config_file)"
    if key in TABLE or key in SD_SCRIPTS_ONLY or key in NO_EFFECT:
        return " (an sd-scripts option: sd-scripts configs are read with --config_file)"
    close = difflib.get_close_matches(key.lower().replace("-", "_"), sorted(options), n=2, cutoff=0.75)
    return f" (did you mean {' or '.join(close)}?)" if close else ""
