"""File-level operations on LoRAs and models: merge and resize LoRAs (algebra), extract a LoRA from two
models (extract), bake LoRAs into a checkpoint (checkpoint_merge). The low-rank math they use is in
`lora/`; reading and writing files in `formats/` and `models/`."""
