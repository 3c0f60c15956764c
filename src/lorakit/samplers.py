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


def make_scheduler(name: str, base_config):
    """A scheduler of the chosen kind that keeps the model's own schedule and prediction type."""
    import diffusers

    key = name.lower().replace(" ", "")
    if key not in SAMPLERS:
        raise LoraKitError(f"unknown sampler {name!r}: choose from {', '.join(SAMPLERS)}")
    cls_name, extra, _ = SAMPLERS[key]
    return getattr(diffusers, cls_name).from_config(base_config, **extra)


def a1111_name(name: str) -> str:
    return SAMPLERS.get(name.lower().replace(" ", ""), (None, None, name))[2]
