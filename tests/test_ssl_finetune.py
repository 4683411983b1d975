"""hubert_finetune: a pretrained mamba-mi HuBERT as an ESPnet ASR encoder (CTC fine-tuning)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from espnet_mamba import registry
from espnet_mamba.ssl.finetune import SSLFinetuneEncoder
from espnet_mamba.ssl.model import load_ssl_model, ssl_hidden_states

registry.register()  # hubert_finetune and conbimamba in ESPnet's tasks

DATA = Path(__file__).resolve().parent / "data" / "s3prl_upstream"


def ckpt(encoder="transformer"):
    return str(DATA / encoder / "model.pth")


def wavs(batch=2, n=6000, seed=0):
    rng = np.random.RandomState(seed)
    speech = torch.from_numpy((0.1 * rng.randn(batch, n)).astype(np.float32))
    lens = torch.tensor([n - 700 * i for i in range(batch)])
    return speech, lens


def test_registered_as_asr_encoder():
    from espnet2.tasks.asr import encoder_choices

    assert encoder_choices.get_class("hubert_finetune") is SSLFinetuneEncoder


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_size": 80}, "input_size must be 1"),
        ({"freeze_encoder_steps": -1}, "freeze_encoder_steps must be a non-negative integer"),
        ({"mask_prob": 1.0}, r"mask_prob must be in \[0, 1\)"),
        ({"mask_length": 0}, "mask_length must be >= 1"),
        ({"ssl_model": None, "ssl_config": None}, "ssl_config or ssl_model must be given"),
    ],
)
def test_bad_hyperparameters(kwargs, message):
    args = dict(input_size=1, ssl_model=ckpt())
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        SSLFinetuneEncoder(**args)


@pytest.mark.parametrize("encoder", ["transformer", "conbimamba"])
def test_output_is_the_pretrained_model_output(encoder):
    model, _ = load_ssl_model(ckpt(encoder))
    enc = SSLFinetuneEncoder(1, ssl_model=ckpt(encoder)).eval()
    speech, lens = wavs()
    with torch.no_grad():
        out, olens, _ = enc(speech, lens)
        hs, hs_lens = ssl_hidden_states(model, speech, lens)
    assert enc.output_size() == 16
    assert olens.tolist() == hs_lens.tolist() == [(int(n) - 400) // 320 + 1 for n in lens]
    for b, n in enumerate(olens.tolist()):
        torch.testing.assert_close(out[b, :n], hs[-1][b, :n], atol=1e-5, rtol=1e-5)


def test_architecture_only_from_config():
    enc = SSLFinetuneEncoder(1, ssl_config=str(DATA / "conbimamba" / "config.yaml"))
    loaded = SSLFinetuneEncoder(1, ssl_model=ckpt("conbimamba"))
    assert enc.state_dict().keys() == loaded.state_dict().keys()


def test_cnn_frozen_and_encoder_frozen_for_the_first_steps():
    torch.manual_seed(0)
    enc = SSLFinetuneEncoder(1, ssl_model=ckpt("conbimamba"), freeze_encoder_steps=2, mask_prob=0.2, mask_length=2)
    head = torch.nn.Linear(enc.output_size(), 5)
    optim = torch.optim.SGD(list(enc.parameters()) + list(head.parameters()), lr=0.1)
    speech, lens = wavs()

    def snapshot(module):
        return {k: v.detach().clone() for k, v in module.named_parameters()}

    cnn0, pre0, encoder0 = snapshot(enc.frontend), snapshot(enc.preencoder), snapshot(enc.encoder)
    enc.train()
    for step in range(1, 4):
        head0 = snapshot(head)
        optim.zero_grad()
        out, olens, _ = enc(speech, lens)
        head(out).logsumexp(-1).mean().backward()
        optim.step()
        assert int(enc.num_updates) == step
        changed_head = any(not torch.equal(v, snapshot(head)[k]) for k, v in head0.items())
        changed_encoder = any(not torch.equal(v, snapshot(enc.encoder)[k]) for k, v in encoder0.items())
        changed_pre = any(not torch.equal(v, snapshot(enc.preencoder)[k]) for k, v in pre0.items())
        assert changed_head
        assert changed_encoder == changed_pre == (step == 3), step
        for k, v in cnn0.items():
            assert torch.equal(v, snapshot(enc.frontend)[k]), k
    enc.eval()
    with torch.no_grad():
        enc(speech, lens)
    assert int(enc.num_updates) == 3  # evaluation does not count


def test_padding_invariance_in_eval():
    enc = SSLFinetuneEncoder(1, ssl_model=ckpt("transformer")).eval()
    speech, lens = wavs()
    with torch.no_grad():
        batch, olens, _ = enc(speech, lens)
        alone, _, _ = enc(speech[1:, : int(lens[1])], lens[1:])
    n = int(olens[1])
    torch.testing.assert_close(batch[1, :n], alone[0, :n], atol=1e-5, rtol=1e-5)


def test_channel_masks_zero_whole_channel_spans():
    from espnet_mamba.ssl.finetune import mask_channels

    torch.manual_seed(0)
    x = torch.randn(3, 7, 64) + 5.0  # no zeros before masking
    out = mask_channels(x, prob=0.5, length=8)  # 0.5 * 64 / 8 = 4 spans of 8 channels each
    for b in range(3):
        zero = (out[b] == 0).all(0)
        assert torch.equal((out[b] == 0).any(0), zero)  # a channel is masked in every frame or none
        assert 8 <= int(zero.sum()) <= 32  # 4 spans of 8, which may overlap
        torch.testing.assert_close(out[b][:, ~zero], x[b][:, ~zero], atol=0, rtol=0)
        # every run of masked channels is at least one span long
        edges = torch.diff(torch.cat([torch.tensor([0]), zero.int(), torch.tensor([0])]))
        starts, ends = torch.nonzero(edges == 1).flatten(), torch.nonzero(edges == -1).flatten()
        assert torch.all(ends - starts >= 8)
    assert torch.equal(mask_channels(x, prob=0.0, length=8), x)


def test_channel_masks_without_time_masks_train():
    enc = SSLFinetuneEncoder(1, ssl_model=ckpt("transformer"), mask_channel_prob=0.5, mask_channel_length=4).train()
    speech, lens = wavs()
    out, _, _ = enc(speech, lens)
    out.sum().backward()
    with pytest.raises(ValueError, match="mask_channel_length .* must not exceed the model size"):
        SSLFinetuneEncoder(1, ssl_model=ckpt("transformer"), mask_channel_prob=0.5, mask_channel_length=64)
