"""A1111 sampler names → diffusers schedulers (the names users type and PNG info records)."""

from __future__ import annotations

from .errors import LoraKitError

# name: (diffusers class, extra config, the name A1111 writes in PNG info)
SAMPLERS = {
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    "ddpm": ("DDPMScheduler", {}, "DDPM"),
    "pndm": ("PNDMScheduler", {}, "PLMS"),
    "lms": ("LMSDiscreteScheduler", {}, "LMS"),
    "heun": ("HeunDiscreteScheduler", {}, "Heun"),
    "dpm++2m": ("DPMSolverMultistepScheduler", {}, "DPM++ 2M"),
    "dpm++2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "DPM++ 2M Karras"),
    "dpm++sde": ("DPMSolverSinglestepScheduler", {}, "DPM++ SDE"),
    "unipc": ("UniPCMultistepScheduler", {}, "UniPC"),
}


# flow-matching models (SD 3.x, Flux.1): the samplers that integrate the velocity field; A1111's default
# `euler_a` has no flow-matching form and means plain Euler there
FLOW_SAMPLERS = {"euler": "FlowMatchEulerDiscreteScheduler", "euler_a": "FlowMatchEulerDiscreteScheduler",
                 "heun": "FlowMatchHeunDiscreteScheduler"}


def effective_name(name: str, base_config) -> str:
    """The sampler that really runs: A1111's default `euler_a` is plain Euler on a flow-matching model."""
    key = name.lower().replace(" ", "")
    if str(base_config.get("_class_name", "")).startswith("FlowMatch") and key == "euler_a":
        return "euler"
    return name


def make_scheduler(name: str, base_config):
    """A scheduler of the chosen kind that keeps the model's own schedule and prediction type."""
    import diffusers

    key = name.lower().replace(" ", "")
    if str(base_config.get("_class_name", "")).startswith("FlowMatch"):
        if key not in FLOW_SAMPLERS:
            raise LoraKitError(f"sampler {name!r} does not apply to a flow-matching model (SD 3.x, Flux.1): "
                               "choose euler or heun")
        return getattr(diffusers, FLOW_SAMPLERS[key]).from_config(base_config)
    if key not in SAMPLERS:
        raise LoraKitError(f"unknown sampler {name!r}: choose from {', '.join(SAMPLERS)}")
    cls_name, extra, _ = SAMPLERS[key]
    return getattr(diffusers, cls_name).from_config(base_config, **extra)


def a1111_name(name: str) -> str:
    return SAMPLERS.get(name.lower().replace(" ", ""), (None, None, name))[2]
