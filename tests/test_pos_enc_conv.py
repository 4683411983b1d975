"""HuBERT's convolutional positional embedding (``pos_enc: conv``) of ConBiMambaEncoder:
against a float64 loop, in the paper's Mamba-HuBERT configs, built through ESPnet's SSL
task as the recipe reads its configs, and through the MI analysis's feature extraction."""

import copy
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_run_mine_helpers as helpers  # noqa: E402

from espnet_mamba.encoder import ConBiMambaEncoder  # noqa: E402

RECIPE = Path(__file__).resolve().parent.parent / "egs2" / "librispeech_100" / "mamba_mi"
CONF = RECIPE / "conf" / "ssl"
D = 16


def conv_pos_reference(x, gain, direction, bias, groups):
    """``x + GELU(conv(x))`` of one sequence ``x`` ``(T, d)`` by a loop over frames, in float64.

    The weight is ``gain * direction / ||direction||`` with the norm taken over the
    output and input channels of each kernel tap (weight normalisation over the kernel
    dimension); frame ``t`` reads frames ``t - K // 2 ... t - K // 2 + K - 1`` (zeros
    outside the sequence), so an even kernel reaches one frame further back than forward.
    """
    x, gain, direction, bias = (t.detach().double() for t in (x, gain, direction, bias))
    frames, size = x.shape
    kernel = direction.shape[2]
    weight = gain * direction / direction.square().sum(dim=(0, 1), keepdim=True).sqrt()
    per_group = size // groups
    dense = torch.zeros(kernel, size, size, dtype=torch.float64)  # block-diagonal per tap
    for g in range(groups):
        block = slice(g * per_group, (g + 1) * per_group)
        dense[:, block, block] = weight[block].permute(2, 0, 1)
    out = torch.empty_like(x)
    for t in range(frames):
        acc = bias.clone()
        for j in range(kernel):
            source = t - kernel // 2 + j
            if 0 <= source < frames:
                acc += dense[j] @ x[source]
        out[t] = x[t] + torch.nn.functional.gelu(acc)
    return out


@pytest.mark.parametrize("kernel, groups", [(4, 4), (5, 16), (128, 16)])
def test_embedding_equals_a_loop_and_ignores_padding(kernel, groups):
    torch.manual_seed(0)
    encoder = ConBiMambaEncoder(
        D, output_size=D, linear_units=16, num_blocks=1, input_layer=None, cnn_module_kernel=3,
        d_state=4, pos_enc="conv", pos_conv_kernel=kernel, pos_conv_groups=groups,
    ).eval()
    parametrized = encoder.pos_conv.conv.convs[0].parametrizations.weight
    gain, direction = parametrized.original0, parametrized.original1
    assert gain.shape == (1, 1, kernel) and direction.shape == (D, D // groups, kernel)
    with torch.no_grad():  # a gain that differs per tap, so that the normalisation axis matters
        gain.copy_(torch.linspace(0.5, 2.0, kernel).view(1, 1, kernel))
    encoder = copy.deepcopy(encoder).double()
    ilens = [30, 11]
    xs = torch.randn(2, 30, D, dtype=torch.float64)
    xs[1, 11:] = 1e3  # loud padding
    with torch.no_grad():
        hidden, olens = encoder.forward_layers(xs, torch.tensor(ilens))
    assert olens.tolist() == ilens
    bias = encoder.pos_conv.conv.convs[0].bias
    for i, n in enumerate(ilens):
        expected = conv_pos_reference(xs[i, :n], gain, direction, bias, groups)
        torch.testing.assert_close(hidden[0][i, :n], expected, atol=1e-10, rtol=1e-10)
        assert torch.all(hidden[0][i, n:] == 0)


def read_config(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("iteration", [1, 2])
def test_paper_configs_have_the_embedding_and_the_ablation_differs_only_there(iteration):
    paper = read_config(CONF / f"mamba_hubert_it{iteration}.yaml")
    ablation = read_config(CONF / "tuning" / f"mamba_hubert_it{iteration}_nopos.yaml")
    conf = paper["encoder_conf"]
    assert (conf["pos_enc"], conf["pos_conv_kernel"], conf["pos_conv_groups"]) == ("conv", 128, 16)
    assert ablation["encoder_conf"]["pos_enc"] == "none"

    def without_pos_options(config):
        encoder_conf = {k: v for k, v in config["encoder_conf"].items() if not k.startswith("pos_")}
        return dict(config, encoder_conf=encoder_conf)

    assert without_pos_options(ablation) == without_pos_options(paper)


def build_small_paper_model(model_dir: Path):
    """Mamba-HuBERT of conf/ssl/mamba_hubert_it1.yaml at toy width, parsed as ESPnet reads a
    --config file (its values become the parser's defaults), built by ESPnet's SSL task and
    saved as ssl_train leaves it (config.yaml + latest.pth)."""
    from espnet2.tasks.ssl import SSLTask

    from espnet_mamba.registry import register

    register()  # conbimamba in the SSL task's encoder choices
    config = read_config(CONF / "mamba_hubert_it1.yaml")
    # HuBERT's kernels and strides, 8 channels
    config["frontend_conf"]["shapes"] = [[8, 10, 5]] + [[8, 3, 2]] * 4 + [[8, 2, 2]] * 2
    config["preencoder_conf"]["output_size"] = D
    config["encoder_conf"].update(
        output_size=D, linear_units=16, num_blocks=2, cnn_module_kernel=5, d_state=4)
    config["loss"][0]["conf"].update(num_classes=8, final_dim=8)
    parser = SSLTask.get_parser()
    parser.set_defaults(**config)
    args = parser.parse_args([])
    args.token_list = [str(i) for i in range(8)] + ["<unk>"]
    return helpers._build_and_save(SSLTask, args, model_dir, "latest.pth", seed=0)


def test_paper_layout_trains_through_the_ssl_task_and_extracts_for_the_analysis(tmp_path):
    from analysis import discover, features

    from espnet_mamba.ssl.model import ssl_features

    model = build_small_paper_model(tmp_path / "exp" / "ssl_mamba_hubert_it1").train()
    pos_conv = model.encoder.pos_conv.conv.convs[0]
    assert pos_conv.kernel_size == (128,) and pos_conv.groups == 16
    speech = 0.1 * torch.randn(2, 8000)
    lengths = torch.tensor([8000, 5000])
    frames = (8000 - 400) // 320 + 1
    text = torch.randint(0, 8, (2, frames))
    loss, _, _ = model(speech, lengths, text, torch.tensor([frames, (5000 - 400) // 320 + 1]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pos_conv.parameters())

    helpers.write_data(tmp_path, per_set=2)
    entries = {e.name: e for e in discover.discover_models(tmp_path / "exp")}
    assert entries["ssl_mamba_hubert_it1"].kind == "espnet-ssl"
    extractor = features.build_extractor(entries["ssl_mamba_hubert_it1"], "cpu")
    assert extractor.layer_names == ["X", "1", "2"] and extractor.padding_safe
    utts = discover.select_utterances(discover.default_wav_scps(tmp_path / "exp"), 3, seed=0)
    wavs = [torch.from_numpy(features.load_audio(spec, tmp_path, utt)[0]) for utt, spec in utts]
    batched = extractor.extract(wavs, [u for u, _ in utts])
    loaded = extractor.model
    for wav, (utt, _), layers in zip(wavs, utts, batched):
        for got, alone in zip(layers, extractor.extract([wav], [utt])[0]):
            torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)
        # X is the input of the first layer: the pre-encoder's features plus the embedding.
        with torch.no_grad():
            feats, _ = ssl_features(loaded, wav[None], torch.tensor([wav.numel()]))
            conv = loaded.encoder.pos_conv.conv.convs[0]
            embedded = torch.nn.functional.conv1d(
                feats.transpose(1, 2), conv.weight, conv.bias, padding=64, groups=16)
            expected = feats[0] + torch.nn.functional.gelu(embedded[0, :, :-1].T)
        assert layers[0].shape == expected.shape
        torch.testing.assert_close(layers[0], expected, atol=1e-5, rtol=1e-5)
