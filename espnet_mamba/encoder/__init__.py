"""ConBiMamba encoder for ESPnet: Conformer blocks with bidirectional Mamba.

The module is here; :mod:`espnet_mamba.encoder.options` checks its options and builds
the input layer and positional encoding they choose.
"""

from typing import List, Optional, Sequence, Tuple

import torch
from espnet2.asr.encoder.abs_encoder import AbsEncoder

from espnet_mamba.encoder.options import SUBSAMPLING, build_embed, check_options, subsampled_length
from espnet_mamba.espnet_compat import LayerNorm, TooShortUttError, check_short_utt
from espnet_mamba.nn.bimamba import Padding
from espnet_mamba.nn.conbimamba_layer import ConBiMambaLayer

__all__ = ["ConBiMambaEncoder"]


class ConBiMambaEncoder(AbsEncoder):
    """ConBiMamba encoder: subsampling, positional encoding, ConBiMamba blocks, LN.

    The computation, in order:

    1. ``embed``: ``input_layer`` (convolutional subsampling by 4, 6 or 8, a linear
       layer, or nothing) and the positional encoding: ``pos_enc="abs"``, ESPnet's
       sinusoidal ``PositionalEncoding``, which also scales by ``sqrt(d)``;
       ``"conv"``, HuBERT's convolutional positional embedding
       ``x + GELU(conv(x))`` (a grouped, weight-normalised Conv1d over time of
       ``pos_conv_kernel`` frames, then dropout), computed after the input layer on
       a batch whose padding frames are zeroed; ``"none"``, dropout only.
    2. ``num_blocks`` :class:`~espnet_mamba.nn.conbimamba_layer.ConBiMambaLayer`
       blocks; each ends with its own LayerNorm.
    3. ``after_norm`` (LayerNorm) when ``normalize_before`` is True.

    Padding frames of shorter sequences never influence valid frames (in eval mode;
    see ConBiMambaLayer about BatchNorm in training), and the encoder sets them to
    zero in everything it returns.

    The input must have the dtype of the encoder's parameters, except under
    ``torch.autocast`` on the input's device, which accepts float16 and bfloat16
    input too (float64 needs float64 parameters: ``encoder.double()``).

    Args:
        input_size: Input feature size.
        output_size: Model size d.
        linear_units: Hidden size of the feed-forward modules.
        num_blocks: Number of ConBiMamba blocks.
        dropout_rate: Dropout in the blocks and after the linear input layer.
        positional_dropout_rate: Dropout after the positional encoding.
        input_layer: ``"conv2d"`` (1/4 length), ``"conv2d6"``, ``"conv2d8"``,
            ``"linear"`` or None (the input is already d-dimensional:
            ``input_size`` must equal ``output_size``).
        normalize_before: Pre-norm blocks and a final LayerNorm (True), or
            post-norm blocks without the final LayerNorm.
        cnn_module_kernel: Odd kernel size of the depthwise convolution.
        use_batch_norm: BatchNorm1d in the convolution modules (else LayerNorm).
        d_state: Mamba state size.
        d_conv: Mamba causal convolution kernel size.
        expand: Mamba inner-size factor.
        mamba_backend: Selective-scan backend, ``"auto"``, ``"torch"`` or ``"cuda"``.
        pos_enc: ``"abs"`` (sinusoidal), ``"conv"`` (HuBERT's convolutional
            positional embedding) or ``"none"``.
        pos_conv_kernel: Kernel size of the convolutional positional embedding
            (HuBERT: 128 frames of 20 ms); used with ``pos_enc="conv"``.
        pos_conv_groups: Channel groups of that convolution (HuBERT: 16); must
            divide ``output_size``; used with ``pos_enc="conv"``.
        padding_idx: Accepted for ESPnet config compatibility; unused (there is
            no token-embedding input layer).
        interctc_layer_idx: 1-based indices of blocks whose (normalised) outputs
            are returned for intermediate CTC; each in ``[1, num_blocks - 1]``.
        interctc_use_conditioning: Add ``conditioning_layer(ctc.softmax(out))`` to
            the features after each intermediate-CTC block (self-conditioned CTC);
            ESPnet's ASR model creates ``conditioning_layer``.

    Example:
        >>> encoder = ConBiMambaEncoder(80, output_size=64, linear_units=128,
        ...                             num_blocks=2).eval()
        >>> xs, olens, _ = encoder(torch.randn(2, 100, 80), torch.tensor([100, 60]))
        >>> xs.shape, olens.tolist()
        (torch.Size([2, 24, 64]), [24, 14])
    """

    def __init__(
        self,
        input_size: int,
        output_size: int = 256,
        linear_units: int = 1024,
        num_blocks: int = 12,
        dropout_rate: float = 0.1,
        positional_dropout_rate: float = 0.1,
        input_layer: Optional[str] = "conv2d",
        normalize_before: bool = True,
        cnn_module_kernel: int = 31,
        use_batch_norm: bool = True,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        mamba_backend: str = "auto",
        pos_enc: str = "abs",
        pos_conv_kernel: int = 128,
        pos_conv_groups: int = 16,
        padding_idx: int = -1,
        interctc_layer_idx: Sequence[int] = (),
        interctc_use_conditioning: bool = False,
    ):
        super().__init__()
        interctc_layer_idx = check_options(
            input_size, output_size, linear_units, num_blocks, dropout_rate,
            positional_dropout_rate, input_layer, pos_enc, pos_conv_kernel, pos_conv_groups,
            mamba_backend, interctc_layer_idx,
        )
        self._output_size = output_size
        self.input_size = input_size
        self.input_layer = input_layer
        self.normalize_before = normalize_before
        self.padding_idx = padding_idx

        embed, pos_conv = build_embed(
            input_layer, input_size, output_size, dropout_rate, pos_enc,
            positional_dropout_rate, pos_conv_kernel, pos_conv_groups,
        )
        self.pos_conv = pos_conv  # pos_enc="conv": applied in _run, where the padding is known
        self.embed = embed

        self.encoders = torch.nn.ModuleList(
            ConBiMambaLayer(
                output_size,
                linear_units=linear_units,
                dropout_rate=dropout_rate,
                cnn_module_kernel=cnn_module_kernel,
                use_batch_norm=use_batch_norm,
                normalize_before=normalize_before,
                d_state=d_state,
                d_conv=d_conv,
                expand=expand,
                mamba_backend=mamba_backend,
            )
            for _ in range(num_blocks)
        )
        self.after_norm = LayerNorm(output_size) if normalize_before else None

        self.interctc_layer_idx = interctc_layer_idx
        self.interctc_use_conditioning = interctc_use_conditioning
        self.conditioning_layer = None  # set by ESPnet's ASR model when conditioning

    def output_size(self) -> int:
        """Feature size of the output."""
        return self._output_size

    def _check_inputs(
        self, xs_pad: torch.Tensor, ilens: torch.Tensor, masks: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Validates the inputs; returns the valid lengths ``(B,)`` on the device of
        ``xs_pad``.

        Shapes are always checked. The values of ``ilens`` are checked when
        ``ilens`` is on the CPU; on a GPU they are not read, since that would make
        the host wait for the GPU in every training step (out-of-range lengths are
        then clamped into ``[0, T]``).
        """
        if xs_pad.dim() != 3:
            raise ValueError(
                f"xs_pad must be (B, T, {self.input_size}), got shape {tuple(xs_pad.shape)}"
            )
        batch, length, feat = xs_pad.shape
        if feat != self.input_size:
            raise ValueError(
                f"xs_pad has feature size {feat}, the encoder expects {self.input_size}"
            )
        self._check_dtype(xs_pad)
        if not torch.is_tensor(ilens) or ilens.shape != (batch,):
            shape = tuple(ilens.shape) if torch.is_tensor(ilens) else type(ilens).__name__
            raise ValueError(f"ilens must be a ({batch},) tensor, got {shape}")
        if batch == 0:
            raise ValueError("xs_pad holds an empty batch")
        if ilens.device.type == "cpu":
            longest, shortest = int(ilens.max()), int(ilens.min())
            if longest > length:
                raise ValueError(
                    f"ilens has a length {longest} longer than xs_pad ({length} frames)"
                )
            if shortest <= 0:
                raise ValueError(f"ilens must be positive, got {ilens.tolist()}")
        if masks is None:
            return ilens.to(xs_pad.device, torch.long, non_blocking=True)
        if masks.shape != (batch, length):
            raise ValueError(
                f"masks must be ({batch}, {length}) (True = padding), "
                f"got shape {tuple(masks.shape)}"
            )
        return (~masks.bool()).sum(-1)

    def _check_dtype(self, xs_pad: torch.Tensor) -> None:
        """Raises ValueError unless the encoder can compute on ``xs_pad``'s dtype:
        that of its parameters, or, under ``torch.autocast`` on the input's device,
        any floating dtype but float64 (autocast casts 16- and 32-bit floats)."""
        dtype = xs_pad.dtype
        if not dtype.is_floating_point:
            raise ValueError(f"xs_pad must hold floating-point features, got {dtype}")
        param_dtype = next(self.parameters()).dtype
        if dtype == param_dtype:
            return
        if dtype != torch.float64 and torch.is_autocast_enabled(xs_pad.device.type):
            return
        if dtype in (torch.float16, torch.bfloat16):
            remedy = (
                f"; for {dtype} computation keep the {param_dtype} parameters and run "
                f"the encoder under torch.autocast({xs_pad.device.type!r}, dtype={dtype})"
            )
        elif dtype == torch.float64:
            remedy = (
                ", or convert the encoder with encoder.double() "
                "(autocast does not cast float64)"
            )
        else:
            remedy = f", or convert the encoder with encoder.to({dtype})"
        raise ValueError(
            f"xs_pad is {dtype} but the encoder's parameters are {param_dtype}: pass "
            f"xs_pad.to({param_dtype}){remedy}"
        )

    def _embed(
        self, xs_pad: torch.Tensor, lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Input layer and positional encoding (but ``pos_enc="conv"``, which
        :meth:`_run` applies once the padding is known).

        Args:
            xs_pad: ``(B, T, input_size)``.
            lengths: Valid input frames ``(B,)``, on the device of ``xs_pad``.

        Returns:
            xs: ``(B, T', d)``.
            olens: ``(B,)``. After convolutional subsampling these are the exact
                numbers of output frames computed from valid input frames only
                (``((L - 1) // 2 - 1) // 2`` for conv2d). ESPnet's subsampled mask
                counts up to two more frames for the shorter sequences of a batch,
                frames that see padding; dropping them keeps a padded batch
                equal to each sequence encoded alone.
        """
        if self.input_layer not in SUBSAMPLING:
            return self.embed(xs_pad), lengths
        too_short, limit = check_short_utt(self.embed, xs_pad.size(1))
        if too_short:
            raise TooShortUttError(
                f"has {xs_pad.size(1)} frames and is too short for subsampling "
                f"(it needs at least {limit} frames)",
                xs_pad.size(1),
                limit,
            )
        xs, _ = self.embed(xs_pad, None)  # the lengths below replace ESPnet's mask
        olens = subsampled_length(self.input_layer, lengths)
        return xs, olens.clamp(min=0, max=xs.size(1))

    def _run(
        self,
        xs_pad: torch.Tensor,
        ilens: torch.Tensor,
        masks: Optional[torch.Tensor],
        ctc,
        keep_all: bool,
    ):
        """Shared forward pass.

        The padding of the batch (lengths, masks, the reversal index of BiMamba) is
        built once, on the device, and shared by all blocks; nothing in the pass
        reads a tensor value on the host. Blocks never let padding frames reach
        valid frames, so padding is zeroed only in the tensors returned.

        Returns:
            xs: Final output ``(B, T', d)``, zero at padding.
            olens: ``(B,)``.
            hidden: ``[X, block 1 output, ..., block N output]`` (raw block
                outputs, zero at padding) if ``keep_all``, else [].
            intermediate_outs: ``[(block index, normalised output), ...]``.
        """
        if self.interctc_use_conditioning and self.interctc_layer_idx:
            if ctc is None or self.conditioning_layer is None:
                raise ValueError(
                    "interctc_use_conditioning needs the ctc module and "
                    "encoder.conditioning_layer (ESPnet's ASR model sets it)"
                )
        lengths = self._check_inputs(xs_pad, ilens, masks)
        xs, olens = self._embed(xs_pad, lengths)
        padding = Padding(olens, xs.size(1))
        olens = padding.lengths
        # Zero the frames that saw padding input (whatever it holds, even inf or nan).
        xs = xs.masked_fill(padding.pad, 0.0)
        if self.pos_conv is not None:
            xs = self.pos_conv(xs, padding.pad)
        hidden = [xs] if keep_all else []
        intermediate_outs = []
        for index, block in enumerate(self.encoders, start=1):
            xs = block(xs, padding=padding)
            if keep_all:
                hidden.append(xs.masked_fill(padding.pad, 0.0))
            if index in self.interctc_layer_idx:
                out = self.after_norm(xs) if self.normalize_before else xs
                out = out.masked_fill(padding.pad, 0.0)
                intermediate_outs.append((index, out))
                if self.interctc_use_conditioning:
                    xs = xs + self.conditioning_layer(ctc.softmax(out))
        if self.normalize_before:
            xs = self.after_norm(xs)
        xs = xs.masked_fill(padding.pad, 0.0)
        return xs, olens, hidden, intermediate_outs

    def forward(
        self,
        xs_pad: torch.Tensor,
        ilens: torch.Tensor,
        prev_states: torch.Tensor = None,
        ctc=None,
        return_all_hs: bool = False,
        masks: Optional[torch.Tensor] = None,
    ):
        """Encodes a padded batch.

        Args:
            xs_pad: ``(B, T, input_size)``.
            ilens: Valid lengths ``(B,)``, each in ``[1, T]``. Checked when on the
                CPU; on a GPU (as ESPnet passes them) their values are not read,
                so that the step never waits for the GPU.
            prev_states: Unused (ESPnet interface).
            ctc: ESPnet CTC module, needed with ``interctc_use_conditioning``.
            return_all_hs: Also return the output of every block.
            masks: Optional padding mask ``(B, T)``, True = padding (ESPnet's SSL
                model passes it); by default built from ``ilens``.

        Returns:
            Like ESPnet's Conformer encoder: ``(xs, olens, None)`` with ``xs``
            ``(B, T', output_size)`` and ``olens`` ``(B,)``. With intermediate CTC,
            ``xs`` is replaced by ``(xs, [(block index, (B, T', d)), ...])``; else
            with ``return_all_hs``, by ``(xs, [block 1 output, ..., block N
            output])`` (raw block outputs, before ``after_norm``).
        """
        xs, olens, hidden, intermediate_outs = self._run(
            xs_pad, ilens, masks, ctc, keep_all=return_all_hs
        )
        if intermediate_outs:
            return (xs, intermediate_outs), olens, None
        if return_all_hs:
            return (xs, hidden[1:]), olens, None
        return xs, olens, None

    def forward_layers(
        self, xs_pad: torch.Tensor, ilens: torch.Tensor, ctc=None
    ) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Features of every layer, for layer-wise analysis.

        Args:
            xs_pad: ``(B, T, input_size)``.
            ilens: Valid lengths ``(B,)``.
            ctc: ESPnet CTC module, needed only with ``interctc_use_conditioning``.

        Returns:
            hidden_states: ``num_blocks + 1`` tensors ``(B, T', output_size)``:
                ``[X, T_1, ..., T_N]``. ``X`` is the input of the first block
                (after the input layer and positional encoding). ``T_i`` for
                ``i < N`` is the output of block ``i`` (which ends with the block's
                own LayerNorm). ``T_N`` is the encoder output, i.e. block ``N``'s
                output passed through ``after_norm`` when ``normalize_before``
                is True; it equals the first output of :meth:`forward`.
                Padding frames are zero in every tensor.
            olens: ``(B,)``.
        """
        xs, olens, hidden, _ = self._run(xs_pad, ilens, None, ctc, keep_all=True)
        hidden[-1] = xs
        return hidden, olens
