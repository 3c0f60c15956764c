"""The measuring side of `lorakit evaluate`: learned image/text encoders (CLIP, DINOv2), the
similarity figures built on them, default prompt sets, and the report files (JSON, HTML, grid).

`evaluation.run` draws the images; this package turns them into numbers and pages.
"""
