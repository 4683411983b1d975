"""mamba-mi: ConBiMamba components for ESPnet."""
