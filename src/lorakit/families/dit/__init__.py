"""What the DiT/MMDiT families (SD 3.x, Flux.1) share: a fused file layer ↔ split model layers."""
