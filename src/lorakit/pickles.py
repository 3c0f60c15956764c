"""What lorakit calls a pickle, and the words of the opt-in; no imports, so the CLI and the
training config can use them without loading torch."""

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
PICKLE_HELP = ("read .ckpt/.pt/.bin pickles too (torch.load with weights_only=True); only for files you "
               "trust: a pickle can run code when loaded")
