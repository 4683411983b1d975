"""Mamba-HuBERT and HuBERT of ESPnet's SSL task (stage 11), through :mod:`espnet_mamba.ssl.model`."""

from typing import List

import torch

from analysis.discover import ModelEntry
from analysis.extractors.base import ExtractionError, LayerExtractor, register_extractor

__all__ = ["EspnetSslExtractor", "ssl_layers"]


def ssl_layers(model: torch.nn.Module, wavs: List[torch.Tensor], device: torch.device) -> List[List[torch.Tensor]]:
    """``[X, T_1..T_N]`` of each waveform (real frames, float32 on CPU) from
    :func:`espnet_mamba.ssl.model.ssl_hidden_states`: X is the input of the first encoder
    layer (CNN features after the pre-encoder, with the positional embedding of
    ``pos_enc: conv`` where the encoder has one), T_i each layer's output."""
    from espnet_mamba.ssl.model import ssl_hidden_states

    lengths = torch.tensor([w.shape[0] for w in wavs], dtype=torch.long, device=device)
    speech = torch.nn.utils.rnn.pad_sequence(list(wavs), batch_first=True).to(device)
    hs, olens = ssl_hidden_states(model, speech, lengths)
    return [[h[b, : int(olens[b])].float().cpu() for h in hs] for b in range(len(wavs))]


@register_extractor("espnet-ssl")
class EspnetSslExtractor(LayerExtractor):
    """A pretrained SSL model, loaded strictly; the same hidden states as its S3PRL upstream."""

    def __init__(self, entry: ModelEntry, device: torch.device) -> None:
        super().__init__(entry, device)
        from espnet_mamba.bin import register
        from espnet_mamba.ssl.model import load_ssl_model, num_encoder_layers

        register()  # our encoders must be ESPnet choices before the config is read

        try:
            model, _ = load_ssl_model(entry.checkpoint, entry.config_path, device=device)
        except (OSError, ValueError, RuntimeError) as e:
            raise ExtractionError(f"model {entry.name}: {e}") from e
        self.model = model.eval()
        n = num_encoder_layers(model)
        self.layer_names = ["X"] + [str(i) for i in range(1, n + 1)]
        self.padding_safe = True  # frontend per utterance; conbimamba/transformer are padding safe
        self.x_description = (
            "hidden_states[0] of the SSL model (= its S3PRL upstream's): input of the first "
            f"{type(model.encoder).__name__} layer (CNN features after normalize/pre-encoder, with the "
            "encoder's convolutional positional embedding if it has one)"
        )

    @torch.no_grad()
    def extract(self, wavs, utt_ids):
        return ssl_layers(self.model, wavs, self.device)
