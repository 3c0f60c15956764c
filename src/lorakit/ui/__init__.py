"""The gradio web UI: every lorakit command in a browser."""
