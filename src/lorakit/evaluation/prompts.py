"""Prompts an evaluation draws when the user gives none.

The LoRA's own prompts put the subject in new contexts, after DreamBench's recontextualisation
prompts (Ruiz et al. 2023); the others leave it out and show what the LoRA moves that it should
not. On the toy world both are captions the scorer reads, with colour/background pairs that the
concept's training images do not use.
"""

from __future__ import annotations

from typing import Sequence

SUBJECT_TEMPLATES = ("a photo of {}", "{} in the jungle", "{} on a beach", "{} in the snow",
                     "{} on a cobblestone street", "{} with a city in the background")
OTHER_PROMPTS = ("a photo of a cat", "a bowl of fruit on a wooden table", "a city street at night",
                 "a portrait photo of a woman")


def toy_prompts(trigger: str) -> tuple[list[str], list[str]]:
    from ..toy import concept, world

    seen = {(s.color, s.background) for s in concept.scenes()}
    fresh = [(c, b) for c in world.COLORS for b in world.BACKGROUNDS if (c, b) not in seen]
    own = [f"a {c} {trigger} on a {b} background" for c, b in fresh[:4]]
    other = [world.caption(world.Scene(s, c, b)) for s, c, b in
             zip(world.SHAPES, ("red", "green", "blue", "yellow"), ("white", "black", "gray", "white"))]
    return own, other


def default_prompts(trigger: str | None, *, toy: bool = False, captions: Sequence[str] = (),
                    class_prompts: Sequence[str] = ()) -> tuple[list[str], list[bool]]:
    """(prompts, own) where own[i] says whether prompt i is the LoRA's own (trigger or training caption)."""
    if toy and trigger:
        own, other = toy_prompts(trigger)
    elif trigger:
        article = "" if trigger.split()[0].lower() in ("a", "an", "the") else "a "
        own = [t.format(article + trigger) for t in SUBJECT_TEMPLATES[:4]]
        other = list(dict.fromkeys(list(class_prompts)[:2] + list(OTHER_PROMPTS)))[:4]
    else:  # trained on captions alone: its own prompts are its captions
        own = list(dict.fromkeys(c for c in captions if c.strip()))[:4]
        other = list(OTHER_PROMPTS)
    return own + other, [True] * len(own) + [False] * len(other)
