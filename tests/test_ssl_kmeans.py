"""K-means pseudo labels for HuBERT pretraining (espnet_mamba.ssl.kmeans)."""

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from espnet_mamba import registry
from espnet_mamba.io import read_wav_scp
from espnet_mamba.ssl import kmeans
from espnet_mamba.ssl.kmeans import MfccFeatures, SslLayerFeatures, fit_kmeans, num_frames

registry.register()  # the layer features of a conbimamba model
DATA = Path(__file__).resolve().parent / "data" / "s3prl_upstream"


def write_corpus(root: Path, lengths, rate=16000, name="train"):
    """A data dir of seeded noise-plus-tone utterances; returns the dir."""
    rng = np.random.RandomState(len(lengths))
    data = root / name
    (root / "wav").mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, n in enumerate(lengths):
        t = np.arange(n) / rate
        wav = 0.2 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.05 * rng.randn(n)
        path = root / "wav" / f"{name}_{i}.flac"
        soundfile.write(path, wav.astype(np.float32), rate)
        lines.append(f"{name}-{i:03d} {path}\n")
    (data / "wav.scp").write_text("".join(lines))
    return data


@pytest.mark.parametrize("n", [400, 401, 719, 720, 1000, 16000, 16399, 16400])
def test_num_frames_equals_espnet_cnn_frames(n):
    from espnet2.asr.frontend.cnn import CNNFrontend

    cnn = CNNFrontend(norm_mode="group_norm", conv_mode="standard", bias=False,
                      shapes=[(4, 10, 5), (4, 3, 2), (4, 3, 2), (4, 3, 2), (4, 3, 2), (4, 2, 2), (4, 2, 2)])
    feats, lens = cnn(torch.zeros(1, n), torch.tensor([n]))
    assert num_frames(n) == feats.shape[1] == int(lens[0])
    assert num_frames(399) == 0


@pytest.mark.parametrize("n", [400, 733, 4000, 12345])
def test_mfcc_labels_sit_on_cnn_frames(n):
    """Static coefficients of label j equal the MFCC of samples [320 j, 320 j + 400) alone."""
    import torchaudio.compliance.kaldi as kaldi

    rng = np.random.RandomState(n)
    wav = (0.1 * rng.randn(n)).astype(np.float32)
    feats = MfccFeatures()(wav)[None]
    assert feats.shape == (num_frames(n), 39)
    for j in {0, feats.shape[0] // 2, feats.shape[0] - 1}:
        segment = torch.from_numpy(wav[320 * j : 320 * j + 400])[None]
        alone = kaldi.mfcc(segment, sample_frequency=16000, use_energy=False, dither=0.0)
        assert alone.shape == (1, 13)
        np.testing.assert_allclose(feats[j, :13], alone[0].numpy(), rtol=1e-4, atol=1e-3)


def test_kmeans_recovers_separated_clusters():
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.RandomState(0)
    centers = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 10.0]])
    truth = rng.randint(0, 3, size=600)
    feats = centers[truth] + rng.randn(600, 3)
    km = fit_kmeans(feats, 3, seed=0, batch_size=100, n_init=3)
    assert adjusted_rand_score(truth, km.predict(feats.astype(np.float32))) == 1.0


def test_kmeans_bad_cluster_counts():
    feats = np.random.RandomState(0).randn(50, 4)
    with pytest.raises(ValueError, match="n_clusters=51 is more than the 50 frames"):
        fit_kmeans(feats, 51)
    with pytest.raises(ValueError, match="n_clusters must be an integer >= 2"):
        fit_kmeans(feats, 1)
    with pytest.raises(ValueError, match="feats must be"):
        fit_kmeans(feats[0], 2)


@pytest.mark.parametrize("layer", [3, -1, 100])
def test_layer_index_out_of_range(layer):
    with pytest.raises(ValueError, match=rf"layer {layer} is out of range for .*model.pth: its encoder has 2 layers"):
        SslLayerFeatures(str(DATA / "transformer" / "model.pth"), [layer])


def test_layer_features_shapes():
    extractor = SslLayerFeatures(str(DATA / "conbimamba" / "model.pth"), [0, 2])
    out = extractor(np.zeros(5000, dtype=np.float32) + 0.01)
    assert set(out) == {0, 2}
    for feats in out.values():
        assert feats.shape == (num_frames(5000), 16)
    assert not np.allclose(out[0], out[2])


def test_wav_scp_errors(tmp_path):
    scp = tmp_path / "wav.scp"
    with pytest.raises(FileNotFoundError, match="wav.scp: no such wav.scp file"):
        read_wav_scp(scp)
    scp.write_text("a x.flac\nb sox x.flac -t wav - |\n")
    with pytest.raises(ValueError, match=r"wav.scp:2: piped command entries are not supported"):
        read_wav_scp(scp)
    scp.write_text("a x.flac\na y.flac\n")
    with pytest.raises(ValueError, match=r"wav.scp:2: utterance 'a' appears twice"):
        read_wav_scp(scp)
    scp.write_text("a\n")
    with pytest.raises(ValueError, match=r"wav.scp:1: expected"):
        read_wav_scp(scp)
    soundfile.write(tmp_path / "x.flac", np.zeros(800, dtype=np.float32), 8000)
    scp.write_text(f"a {tmp_path / 'x.flac'}\n")
    with pytest.raises(ValueError, match="sample rate 8000 Hz, expected 16000"):
        list(kmeans.iter_wav_scp(scp))


def test_cli_mfcc_labels(tmp_path):
    train = write_corpus(tmp_path, [4000, 5200, 6100, 3000], name="train")
    valid = write_corpus(tmp_path, [2500, 4700], name="valid")
    out = tmp_path / "labels"
    kmeans.main(["--feature", "mfcc", "--n_clusters", "5", "--fit_data_dir", str(train), "--data_dirs",
                 str(train), str(valid), "--out_dir", str(out), "--n_init", "2", "--portion", "0.5"])
    assert (out / "tokens.txt").read_text().split() == ["0", "1", "2", "3", "4", "<unk>"]
    samples = {u: soundfile.info(p).frames for u, p in read_wav_scp(train / "wav.scp").items()}
    for dset, keys in (("train", 4), ("valid", 2)):
        text = [line.split() for line in (out / dset / "text").read_text().splitlines()]
        shapes = dict(line.split() for line in (out / dset / "text_shape").read_text().splitlines())
        speech = dict(line.split() for line in (out / dset / "speech_shape").read_text().splitlines())
        assert len(text) == keys
        for utt, *labels in text:
            assert all(0 <= int(x) < 5 for x in labels)
            assert len(labels) == int(shapes[utt]) == num_frames(int(speech[utt]))
    for utt, n in samples.items():
        assert (out / "train" / "speech_shape").read_text().count(f"{utt} {n}\n") == 1
    # ESPnet's token converter maps a label to the id it names
    from espnet2.text.token_id_converter import TokenIDConverter

    converter = TokenIDConverter(str(out / "tokens.txt"))
    assert converter.tokens2ids(["3", "0", "4"]) == [3, 0, 4]


def test_cli_layer_labels_and_errors(tmp_path):
    train = write_corpus(tmp_path, [4000, 5200, 6100], name="train")
    ckpt = str(DATA / "transformer" / "model.pth")
    kmeans.main(["--feature", "ssl", "--ssl_model", ckpt, "--layers", "1", "2", "--n_clusters", "3",
                 "--fit_data_dir", str(train), "--data_dirs", str(train), "--out_dir",
                 str(tmp_path / "it2_L{layer}"), "--n_init", "2"])
    for layer in (1, 2):
        lines = (tmp_path / f"it2_L{layer}" / "train" / "text").read_text().splitlines()
        assert len(lines) == 3 and len(lines[0].split()) == 1 + num_frames(4000)
    with pytest.raises(ValueError, match="n_clusters=1000 is more than the"):
        kmeans.main(["--feature", "mfcc", "--n_clusters", "1000", "--fit_data_dir", str(train), "--data_dirs",
                     str(train), "--out_dir", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="must contain '{layer}'"):
        kmeans.main(["--feature", "ssl", "--ssl_model", ckpt, "--layers", "1", "2", "--n_clusters", "3",
                     "--fit_data_dir", str(train), "--data_dirs", str(train), "--out_dir", str(tmp_path / "y")])
    with pytest.raises(ValueError, match="layer 7 is out of range"):
        kmeans.main(["--feature", "ssl", "--ssl_model", ckpt, "--layers", "7", "--n_clusters", "3",
                     "--fit_data_dir", str(train), "--data_dirs", str(train), "--out_dir", str(tmp_path / "z")])
