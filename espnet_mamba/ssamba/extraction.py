"""Layer-wise features of an SSAMBA model (what the MI analysis measures).

:class:`LayerExtraction` is mixed into :class:`espnet_mamba.ssamba.SSAMBA`: waveforms
or log-mel matrices in, the input of the first layer and the output of every layer
pair out, with a mask of the patches that cover real frames.
"""

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import torch

from espnet_mamba.ssamba.features import SAMPLE_RATE, compute_fbank, fbank_batch, waveforms_to_list

__all__ = ["ORDERS", "LayerExtraction", "LayerFeatures"]

ORDERS = ("time", "model")


@dataclass
class LayerFeatures:
    """Layer-wise features of :meth:`SSAMBA.extract_layers`.

    Attributes:
        hidden_states: ``depth / 2 + 1`` tensors ``(B, P, D)`` (``depth + 1`` without
            paired layers): [0] the patch embeddings entering the first layer
            (positional embedding added), [i] the output of layer pair i. The cls
            token is left out; frames are patches.
        mask: ``(B, P)`` bool, True where a patch covers at least one real
            (not padded) fbank frame.
        lengths: ``(B,)`` int64, valid patches per item (``mask.sum(1)``).
        n_frames: ``(B,)`` int64, real fbank frames per item (after cutting to the
            target length).
        grid: ``(f_dim, t_dim)``, patches along frequency and time.
        order: "time" (patch ``t * f_dim + f``: valid patches come first, so
            ``mask`` is a prefix mask) or "model" (the model's frequency-major
            order ``f * t_dim + t``).
    """

    hidden_states: List[torch.Tensor]
    mask: torch.Tensor
    lengths: torch.Tensor
    n_frames: torch.Tensor
    grid: Tuple[int, int]
    order: str


class LayerExtraction:
    """Feature extraction of :class:`espnet_mamba.ssamba.SSAMBA` (uses its ``config``,
    ``embed``, ``run_layers`` and ``v``)."""

    def valid_patch_mask(self, n_frames: torch.Tensor) -> torch.Tensor:
        """Patches covering at least one real frame, in the model's order.

        Args:
            n_frames: ``(B,)`` real frames per item (at most ``input_tdim``).

        Returns:
            ``(B, P)`` bool; patch ``f * t_dim + t`` is valid iff
            ``t * tshape < n_frames``.
        """
        cfg = self.config
        n_frames = torch.as_tensor(n_frames, dtype=torch.long)
        valid_t = (n_frames + cfg.tshape - 1) // cfg.tshape  # (B,)
        t = torch.arange(cfg.t_dim)
        mask_t = t[None, :] < valid_t[:, None]  # (B, t_dim)
        return mask_t[:, None, :].expand(-1, cfg.f_dim, -1).reshape(len(n_frames), -1)

    def _to_time_order(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, P, ...)`` frequency-major -> time-major (patch ``t * f_dim + f``)."""
        cfg = self.config
        rest = x.shape[2:]
        x = x.reshape(x.shape[0], cfg.f_dim, cfg.t_dim, *rest).transpose(1, 2)
        return x.reshape(x.shape[0], cfg.num_patches, *rest)

    def prepare_input(
        self,
        wavs: Optional[Any] = None,
        *,
        wav_lengths: Optional[Any] = None,
        sample_rate: int = SAMPLE_RATE,
        fbank: Optional[Any] = None,
        fbank_lengths: Optional[Any] = None,
        norm_mean: Optional[float] = None,
        norm_std: Optional[float] = None,
        names: Optional[Sequence[str]] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Waveforms or raw log-mel matrices -> normalized, padded model input.

        Exactly one of ``wavs`` and ``fbank`` must be given. See
        :meth:`extract_layers` for the arguments.

        Returns:
            feats: ``(B, input_tdim, input_fdim)``.
            n_frames: ``(B,)`` real frames per item.
        """
        cfg = self.config
        if (wavs is None) == (fbank is None):
            raise ValueError("give exactly one of wavs and fbank")
        norm_mean = cfg.norm_mean if norm_mean is None else norm_mean
        norm_std = cfg.norm_std if norm_std is None else norm_std
        if wavs is not None:
            if sample_rate != cfg.sample_rate:
                raise ValueError(
                    f"the model expects {cfg.sample_rate} Hz audio, got sample_rate="
                    f"{sample_rate}; resample first"
                )
            wav_list = waveforms_to_list(wavs, wav_lengths)
            names = names or [f"waveform {i}" for i in range(len(wav_list))]
            fbanks = [
                compute_fbank(w, sample_rate, cfg.input_fdim, name=n)
                for w, n in zip(wav_list, names)
            ]
        else:
            fbanks = waveforms_to_list(fbank, fbank_lengths, item_dim=2)
            names = names or [f"fbank {i}" for i in range(len(fbanks))]
        return fbank_batch(
            fbanks, cfg.input_tdim, norm_mean, norm_std, min_frames=cfg.tshape, names=names
        )

    @torch.no_grad()
    def forward_layers(
        self,
        feats: torch.Tensor,
        n_frames: Optional[torch.Tensor] = None,
        output: str = "residual",
        final_norm: bool = False,
        order: str = "time",
    ) -> LayerFeatures:
        """Layer-wise features of a normalized, padded input.

        Args:
            feats: ``(B, input_tdim, input_fdim)`` from :meth:`prepare_input`.
            n_frames: ``(B,)`` real frames per item (default: all frames real).
            output: "residual" or "mixer" (see :meth:`run_layers`).
            final_norm: Give the last entry after ``norm_f`` (the model's final
                output) instead of the raw last pair output.
            order: "time" or "model" (see :class:`LayerFeatures`).

        Returns:
            :class:`LayerFeatures`.
        """
        cfg = self.config
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if n_frames is None:
            n_frames = torch.full((feats.shape[0],), cfg.input_tdim, dtype=torch.long)
        n_frames = torch.as_tensor(n_frames, dtype=torch.long).cpu()
        if n_frames.shape != (feats.shape[0],):
            raise ValueError(
                f"n_frames must be ({feats.shape[0]},), got shape {tuple(n_frames.shape)}"
            )
        if (n_frames < 1).any() or (n_frames > cfg.input_tdim).any():
            raise ValueError(f"n_frames must lie in [1, {cfg.input_tdim}], got {n_frames.tolist()}")
        tokens = self.embed(feats)
        final, outputs = self.run_layers(tokens, collect=True, output=output)
        if final_norm:
            outputs[-1] = final
        hidden_states = [h[:, 1:] for h in [tokens] + outputs]  # drop the cls token
        mask = self.valid_patch_mask(n_frames).to(feats.device)
        if order == "time":
            hidden_states = [self._to_time_order(h) for h in hidden_states]
            mask = self._to_time_order(mask)
        return LayerFeatures(
            hidden_states=hidden_states,
            mask=mask,
            lengths=mask.sum(1),
            n_frames=n_frames,
            grid=(cfg.f_dim, cfg.t_dim),
            order=order,
        )

    @torch.no_grad()
    def extract_layers(
        self,
        wavs: Optional[Any] = None,
        *,
        wav_lengths: Optional[Any] = None,
        sample_rate: int = SAMPLE_RATE,
        fbank: Optional[Any] = None,
        fbank_lengths: Optional[Any] = None,
        norm_mean: Optional[float] = None,
        norm_std: Optional[float] = None,
        output: str = "residual",
        final_norm: bool = False,
        order: str = "time",
        names: Optional[Sequence[str]] = None,
    ) -> LayerFeatures:
        """Layer-wise features of waveforms (or of raw log-mel matrices).

        Each item is turned into a log-mel matrix as SSAMBA does, zero-padded (or
        cut) to ``input_tdim`` frames, normalized, and run through the model; the
        patches are the frames of the returned features. Call ``model.eval()``
        first (dropout and stochastic depth are active in training mode).

        Args:
            wavs: One waveform ``(L,)``, a padded batch ``(B, L)`` (with
                ``wav_lengths``) or a list of 1-D waveforms; float in [-1, 1].
            wav_lengths: Real lengths of a padded waveform batch.
            sample_rate: Sample rate of ``wavs`` (must be the model's, 16 kHz).
            fbank: Instead of ``wavs``: raw (not normalized, not padded) log-mel
                matrices, a list of ``(T_b, F)`` or a padded ``(B, T, F)`` with
                ``fbank_lengths``.
            fbank_lengths: Real frames of a padded fbank batch.
            norm_mean: Log-mel mean of the pretraining data (default: the
                config's; required when the config has none).
            norm_std: Log-mel standard deviation of the pretraining data.
            output: "residual" (residual stream after each pair) or "mixer".
            final_norm: Last entry after the final norm (see :meth:`forward_layers`).
            order: "time" (valid patches first) or "model".
            names: Item names for error messages.

        Returns:
            :class:`LayerFeatures` with ``depth / 2 + 1`` hidden states.

        Raises:
            ValueError: Missing normalization statistics, another sample rate, an
                item shorter than one patch (``tshape`` frames), bad shapes.
        """
        feats, n_frames = self.prepare_input(
            wavs,
            wav_lengths=wav_lengths,
            sample_rate=sample_rate,
            fbank=fbank,
            fbank_lengths=fbank_lengths,
            norm_mean=norm_mean,
            norm_std=norm_std,
            names=names,
        )
        device = self.v.pos_embed.device
        return self.forward_layers(
            feats.to(device), n_frames, output=output, final_norm=final_norm, order=order
        )
