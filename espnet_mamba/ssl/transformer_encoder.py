"""The Transformer HuBERT baseline's encoder: ESPnet's TransformerEncoder in HuBERT's layout.

fairseq's HuBERT adds its convolutional positional embedding to the features before
the layers: ``x + GELU(conv(x))``. ESPnet's ``TransformerEncoder`` with
``input_layer: wav2vec`` and ``pos_enc_layer_type: conv`` builds the same embedding
without the addition (its ``ConvolutionalPositionalEmbedding`` defaults to
``use_residual=False``), so the layers see ``GELU(conv(x))`` alone.
:class:`HubertTransformerEncoder` is that encoder with the addition turned on; its
parameters and their names are ESPnet's, so a checkpoint of either loads into the
other (with the other's embedding).
"""

from espnet2.asr.encoder.transformer_encoder import TransformerEncoder

from espnet_mamba.espnet_compat import ConvolutionalPositionalEmbedding

__all__ = ["HubertTransformerEncoder"]


class HubertTransformerEncoder(TransformerEncoder):
    """``TransformerEncoder`` whose wav2vec input layer computes ``x + GELU(conv(x))``.

    Takes the arguments of ESPnet's ``TransformerEncoder``; ``input_layer`` must be
    ``wav2vec`` and ``pos_enc_layer_type`` ``conv`` (HuBERT's input layer), the
    defaults here. Input ``(B, T, output_size)``: the projected CNN features.

    Raises:
        ValueError: Another input layer or positional encoding was asked for.
    """

    def __init__(self, input_size: int, output_size: int = 256, input_layer: str = "wav2vec",
                 pos_enc_layer_type: str = "conv", **kwargs) -> None:
        if input_layer != "wav2vec" or pos_enc_layer_type != "conv":
            raise ValueError(
                "hubert_transformer is HuBERT's layout: it needs input_layer: wav2vec and pos_enc_layer_type: "
                f"conv, got input_layer: {input_layer} and pos_enc_layer_type: {pos_enc_layer_type} "
                "(ESPnet's 'transformer' encoder takes the others)"
            )
        super().__init__(input_size, output_size, input_layer=input_layer, pos_enc_layer_type=pos_enc_layer_type,
                         **kwargs)
        embedding = self.embed[0]
        if not isinstance(embedding, ConvolutionalPositionalEmbedding):
            raise TypeError(f"ESPnet's wav2vec input layer starts with {type(embedding).__name__}, expected "
                            "ConvolutionalPositionalEmbedding (see espnet_mamba.espnet_compat)")
        embedding.use_residual = True
