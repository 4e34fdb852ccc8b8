"""Training (``trainer``) and evaluation (``evaluate``) of VIMCAN on synthesised data."""
