"""Entry points: ESPnet mains with mamba-mi registered (python -m espnet_mamba.bin.NAME)."""
