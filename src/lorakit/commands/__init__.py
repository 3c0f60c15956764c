"""One module per CLI area; each function is a thin typer command calling the library."""
