"""The UNet architecture SD 1.x, 2.x and XL share: its kohya names (diffusers ↔ SAI paths), its
original single-file layout and loading, and one module per family (sd1, sd2, sdxl)."""
