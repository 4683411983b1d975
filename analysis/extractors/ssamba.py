"""SSAMBA models of ``espnet_mamba.bin.ssamba_train`` (``config.yaml`` + ``model.pth``)."""

import torch

from analysis.discover import ModelEntry
from analysis.extractors.base import ExtractionError, LayerExtractor, register_extractor

__all__ = ["SsambaExtractor"]


@register_extractor("ssamba")
class SsambaExtractor(LayerExtractor):
    """X: the patch embeddings entering the first layer (positional embedding added, cls
    token left out); T_i: the output of layer pair i; frames: the valid patches in time
    order (:meth:`espnet_mamba.ssamba.model.SSAMBA.extract_layers`). Loaded strictly by
    :func:`espnet_mamba.ssamba.load_ssamba`."""

    def __init__(self, entry: ModelEntry, device: torch.device) -> None:
        super().__init__(entry, device)
        from espnet_mamba.ssamba import load_ssamba

        try:
            model = load_ssamba(entry.checkpoint, strict=True)
        except (OSError, ValueError, RuntimeError) as e:
            raise ExtractionError(f"model {entry.name}: {e}") from e
        self.model = model.to(device).eval()
        self.sample_rate = model.config.sample_rate
        self.layer_names = ["X"] + [str(i) for i in range(1, model.num_layer_outputs + 1)]
        self.padding_safe = True
        self.x_description = (
            "SSAMBA patch embeddings entering the first layer (positional embedding added, cls token "
            "left out); T_i = output of layer pair i; frames = valid patches in time order"
        )

    @torch.no_grad()
    def extract(self, wavs, utt_ids):
        feats = self.model.extract_layers(list(wavs), names=list(utt_ids), order="time")
        return [[h[b, : int(feats.lengths[b])].float().cpu() for h in feats.hidden_states]
                for b in range(len(wavs))]
