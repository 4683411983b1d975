"""S3PRL upstream expert for mamba-mi HuBERT checkpoints (Mamba-HuBERT and HuBERT).

The expert wraps an ESPnet SSL-task model (see :mod:`espnet_mamba.ssl.model`) and
follows S3PRL's upstream interface: ``forward(wavs)`` takes a list of 16 kHz
waveforms ``(N_b,)`` and returns ``{"hidden_states": [(B, T, D), ...]}`` with the
input of the first encoder layer first and then every layer's output;
``get_downsample_rates`` gives the CNN stride (320 samples for HuBERT shapes).

Example:
    >>> expert = UpstreamExpert("exp/ssl_mamba_hubert_it2_L9/latest.pth")
    >>> out = expert([torch.randn(16000), torch.randn(8000)])
    >>> len(out["hidden_states"]), out["hidden_states"][0].shape
    (13, torch.Size([2, 49, 768]))
"""

from typing import Dict, List, Optional, Tuple

import torch

from espnet_mamba import registry
from espnet_mamba.ssl.model import load_ssl_model, ssl_hidden_states

__all__ = ["UpstreamExpert"]


class UpstreamExpert(torch.nn.Module):
    """Every layer of a pretrained mamba-mi HuBERT model, for S3PRL.

    Args:
        ckpt: Model file written by ESPnet's SSL training (``latest.pth``,
            ``valid.loss.best.pth``, ``NNepoch.pth``).
        config: Its training config; default ``config.yaml`` beside ``ckpt``.
        encoder: Require one of these encoders (e.g. ``("conbimamba",)``);
            None accepts every supported one.
        always_eval: Keep the pretrained model in eval mode (no dropout, fixed
            BatchNorm statistics) even when a parent module is put in training
            mode, as a frozen upstream should be (ESPnet's ``frontend: s3prl``
            trains the whole model in train mode). False lets dropout act, for
            fine-tuning the upstream.

    Raises:
        FileNotFoundError: ``ckpt`` or its config is missing.
        espnet_mamba.ssl.model.NotOurCheckpointError: The files are not a mamba-mi
            HuBERT checkpoint (or not of ``encoder``).
    """

    def __init__(
        self, ckpt: str, config: Optional[str] = None, encoder: Optional[Tuple[str, ...]] = None, always_eval: bool = True
    ):
        super().__init__()
        registry.register()  # ESPnet's SSL task builds the model: it must know conbimamba
        self.model, self.config = load_ssl_model(ckpt, config, expected_encoder=encoder)
        self.downsample_rate = self.model.frontend.downsampling_factor
        self.always_eval = always_eval

    def train(self, mode: bool = True) -> "UpstreamExpert":
        """Set the training mode; the pretrained model stays in eval mode if ``always_eval``."""
        super().train(mode)
        if self.always_eval:
            self.model.eval()
        return self

    def get_downsample_rates(self, key: str = None) -> int:
        """Samples of 16 kHz audio per frame, the same for every hidden state."""
        return self.downsample_rate

    def forward(self, wavs: List[torch.Tensor]) -> Dict[str, List[torch.Tensor]]:
        """Extract hidden states.

        Args:
            wavs: Waveforms, each ``(N_b,)``, on the expert's device.

        Returns:
            ``{"hidden_states": [X, T_1, ..., T_N]}``, each ``(B, T, D)``: ``X`` the
            input of the first encoder layer, ``T_i`` the output of layer ``i`` (the
            last is the encoder's final output). Frames beyond an utterance's
            length are zero.
        """
        if len(wavs) == 0:
            raise ValueError("wavs is empty: at least one waveform is needed")
        for i, wav in enumerate(wavs):
            if wav.dim() != 1:
                raise ValueError(f"wavs[{i}] must be 1-D (samples,), got shape {tuple(wav.shape)}")
        lengths = torch.tensor([len(w) for w in wavs], dtype=torch.long, device=wavs[0].device)
        speech = torch.nn.utils.rnn.pad_sequence(list(wavs), batch_first=True)
        hidden_states, _ = ssl_hidden_states(self.model, speech, lengths)
        return {"hidden_states": hidden_states}
