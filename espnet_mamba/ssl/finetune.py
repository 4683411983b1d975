"""``hubert_finetune``: a pretrained mamba-mi HuBERT model as an ESPnet ASR encoder.

HuBERT's fine-tuning recipe, in ESPnet's ASR task: the model reads raw waveforms
(``input_size: 1``, no frontend), the CNN feature extractor stays frozen throughout,
and the rest of the pretrained model (preencoder and encoder) is frozen for the
first ``freeze_encoder_steps`` training steps, during which only the CTC output
layer learns. Optionally, time and channel masks (HuBERT's fine-tuning
augmentation) are applied to the encoder input in training, using the pretrained
mask embedding.

Config example (CTC only)::

    input_size: 1
    encoder: hubert_finetune
    encoder_conf:
        ssl_config: exp/ssl_mamba_hubert_it2_L9/config.yaml
        ssl_model: exp/ssl_mamba_hubert_it2_L9/latest.pth
        freeze_encoder_steps: 10000
        mask_prob: 0.65
    decoder: none
    model_conf:
        ctc_weight: 1.0

Steps are counted as training forward calls (equal to updates when
``accum_grad: 1``) in a buffer saved with the model, so a resumed training keeps
its count. With several GPUs, set ``unused_parameters: true``: the frozen part has
no gradients during the first steps.
"""

import contextlib
from typing import Optional, Tuple

import torch
from espnet2.asr.encoder.abs_encoder import AbsEncoder

from espnet_mamba.espnet_compat import make_pad_mask
from espnet_mamba.ssl.model import build_ssl_model, load_ssl_config, load_ssl_model, ssl_features

__all__ = ["SSLFinetuneEncoder", "mask_channels"]


def mask_channels(x: torch.Tensor, prob: float, length: int) -> torch.Tensor:
    """Zero random spans of channels, the same for all frames of an utterance.

    As wav2vec 2.0 / HuBERT fine-tuning: ``int(prob * D / length + U[0, 1))`` spans of
    ``length`` channels start at random positions in each utterance (spans may
    overlap).

    Args:
        x: Features (B, T, D).
        prob: Masking probability; about ``prob * D`` channels are zeroed.
        length: Channels per span (at most D).

    Returns:
        The masked features (B, T, D).
    """
    batch, _, dim = x.shape
    mask = torch.zeros(batch, dim, dtype=torch.bool, device=x.device)
    for b in range(batch):
        num = int(prob * dim / length + torch.rand(()).item())
        for start in torch.randint(0, dim - length + 1, (num,)).tolist():
            mask[b, start : start + length] = True
    return x.masked_fill(mask[:, None, :], 0.0)


class SSLFinetuneEncoder(AbsEncoder):
    """Pretrained CNN + preencoder + encoder of an ESPnet SSL model, for fine-tuning.

    Args:
        input_size: Must be 1 (raw waveform; ESPnet's ASR task passes its
            ``input_size``).
        ssl_config: Training config of the pretrained model; default
            ``config.yaml`` beside ``ssl_model``.
        ssl_model: Its model file; None builds the architecture of ``ssl_config``
            with random weights (for loading fine-tuned weights afterwards).
        freeze_encoder_steps: Training steps during which everything but the CTC
            layer is frozen (HuBERT: 10000 for 100 h).
        mask_prob: Time-masking probability in training (HuBERT: 0.65); 0 disables.
        mask_length: Length of each time mask, in frames.
        mask_channel_prob: Channel-masking probability in training (HuBERT 100 h: 0.5).
        mask_channel_length: Length of each channel mask.

    Raises:
        ValueError: A bad hyperparameter, or files that are not a mamba-mi HuBERT
            checkpoint (``NotOurCheckpointError``).
    """

    def __init__(
        self,
        input_size: int,
        ssl_config: Optional[str] = None,
        ssl_model: Optional[str] = None,
        freeze_encoder_steps: int = 0,
        mask_prob: float = 0.0,
        mask_length: int = 10,
        mask_channel_prob: float = 0.0,
        mask_channel_length: int = 64,
    ):
        super().__init__()
        if input_size != 1:
            raise ValueError(
                f"input_size must be 1 (the encoder reads raw waveforms; set 'input_size: 1' in the "
                f"ASR config so that no frontend is built), got {input_size}"
            )
        steps = freeze_encoder_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"freeze_encoder_steps must be a non-negative integer, got {freeze_encoder_steps!r}")
        for name, value in (("mask_prob", mask_prob), ("mask_channel_prob", mask_channel_prob)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        for name, value in (("mask_length", mask_length), ("mask_channel_length", mask_channel_length)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")

        if ssl_model is None and ssl_config is None:
            raise ValueError("ssl_config or ssl_model must be given (the pretrained model to fine-tune)")
        if ssl_model is not None:
            model, _ = load_ssl_model(ssl_model, ssl_config)
        else:
            model = build_ssl_model(load_ssl_config(ssl_config, ssl_config)[0])

        self.frontend = model.frontend
        for p in self.frontend.parameters():
            p.requires_grad_(False)
        self.normalize = model.normalize
        self.preencoder = model.preencoder
        self.encoder = model.encoder
        self.freeze_encoder_steps = freeze_encoder_steps
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

        if mask_channel_prob > 0 and mask_channel_length > self.encoder.output_size():
            raise ValueError(
                f"mask_channel_length ({mask_channel_length}) must not exceed the model size "
                f"({self.encoder.output_size()})"
            )
        self.masking = None
        if mask_prob > 0:
            from espnet2.ssl.utils.mask import Masking

            # time masks only: ESPnet's Masking fails on channel masks without time masks
            self.masking = Masking(
                encoder_embed_dim=self.encoder.output_size(), mask_prob=mask_prob, mask_length=mask_length
            )
            if "mask" in model.util_modules:
                self.masking.mask_embedding.data.copy_(model.util_modules["mask"].mask_embedding.data)
        self.mask_channel_prob = mask_channel_prob
        self.mask_channel_length = mask_channel_length

    def output_size(self) -> int:
        """Feature size of the output (the pretrained encoder's d)."""
        return self.encoder.output_size()

    def encoder_frozen(self) -> bool:
        """Whether the next training step keeps the preencoder and encoder frozen."""
        return int(self.num_updates) < self.freeze_encoder_steps

    def forward(
        self,
        xs_pad: torch.Tensor,
        ilens: torch.Tensor,
        prev_states: torch.Tensor = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, None]:
        """Encode raw waveforms.

        Args:
            xs_pad: Waveforms (B, N) or (B, N, 1).
            ilens: Valid samples (B,).
            prev_states: Unused (ESPnet interface).

        Returns:
            Encoder output (B, T, D), output lengths (B,) and None.
        """
        if xs_pad.dim() == 3 and xs_pad.size(-1) == 1:
            xs_pad = xs_pad.squeeze(-1)
        if xs_pad.dim() != 2:
            raise ValueError(f"xs_pad must be raw waveforms (B, N), got shape {tuple(xs_pad.shape)}")
        frozen = self.training and self.encoder_frozen()
        if self.training:
            self.num_updates += 1

        with torch.no_grad() if frozen else contextlib.nullcontext():
            # the CNN's parameters never require grad, so it builds no graph here
            feats, lens = ssl_features(self, xs_pad, ilens)
            if self.masking is not None and self.training:
                pad = make_pad_mask(lens, maxlen=feats.size(1)).to(feats.device)
                feats, _ = self.masking(feats, pad)
            if self.mask_channel_prob > 0 and self.training:
                feats = mask_channels(feats, self.mask_channel_prob, self.mask_channel_length)
            xs, olens, _ = self.encoder(feats, lens)
        return xs, olens, None
