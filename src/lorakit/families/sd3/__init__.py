"""SD 3.x (MMDiT): the family, its name and row tables, its LoRA file layouts and its loading."""
