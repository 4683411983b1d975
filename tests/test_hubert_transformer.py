"""The Transformer HuBERT baseline's encoder (espnet_mamba.ssl.transformer_encoder)."""

import pytest
import torch
from espnet2.asr.encoder.transformer_encoder import TransformerEncoder
from torch.nn import functional as F

from espnet_mamba.ssl.transformer_encoder import HubertTransformerEncoder

CONF = dict(output_size=16, attention_heads=2, linear_units=32, num_blocks=2, dropout_rate=0.0,
            positional_dropout_rate=0.0, attention_dropout_rate=0.0, input_layer="wav2vec",
            normalize_before=False, pos_enc_layer_type="conv")


def _pair():
    """ESPnet's encoder and ours, with the same weights (the parameter names must match)."""
    torch.manual_seed(0)
    espnet = TransformerEncoder(16, **CONF).eval()
    ours = HubertTransformerEncoder(16, **CONF).eval()
    ours.load_state_dict(espnet.state_dict(), strict=True)
    return espnet, ours


def test_input_layer_adds_the_convolutional_embedding_to_the_features():
    espnet, ours = _pair()
    x = torch.randn(2, 150, 16, dtype=torch.float64)
    espnet.double(), ours.double()
    embedding = ours.embed[0]
    # HuBERT's x + GELU(conv(x)), the conv's extra last frame dropped (even kernel 128)
    conv = embedding.convs[0]
    expected = x + F.gelu(conv(x.transpose(1, 2))[..., :-1]).transpose(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(ours.embed(x), expected, rtol=1e-12, atol=1e-12)
        # ESPnet's own layer computes the same thing without the addition
        torch.testing.assert_close(ours.embed(x) - espnet.embed(x), x, rtol=1e-12, atol=1e-12)


def test_layers_see_the_summed_input():
    espnet, ours = _pair()
    x = torch.randn(2, 40, 16)
    lengths = torch.tensor([40, 31])
    with torch.no_grad():
        out_ours, olens, _ = ours(x, lengths)
        out_espnet, _, _ = espnet(x, lengths)
    assert out_ours.shape == (2, 40, 16) and olens.tolist() == [40, 31]
    assert not torch.allclose(out_ours, out_espnet)


@pytest.mark.parametrize("options", [dict(input_layer="conv2d"), dict(pos_enc_layer_type="abs_pos")])
def test_other_input_layers_are_refused(options):
    with pytest.raises(ValueError, match="hubert_transformer is HuBERT's layout"):
        HubertTransformerEncoder(16, **dict(CONF, **options))
