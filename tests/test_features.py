"""Tests of the MI analysis inputs: model discovery, utterance selection, audio reading,
layer extraction (shapes, no padding frames, batch = one at a time) and the feature cache."""

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_run_mine_helpers as helpers  # noqa: E402

from analysis import discover, feature_cache, features, pairing  # noqa: E402


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    helpers.make_recipe(root, per_set=4)
    return root


def _extract_one_by_one(extractor, wavs, ids):
    return [extractor.extract([w], [u])[0] for w, u in zip(wavs, ids)]


def _wavs(root, utterances):
    return [torch.from_numpy(features.load_audio(spec, root, utt)[0]) for utt, spec in utterances]


# ----------------------------------------------------------------- discovery
def test_discover_models_kinds_tags_and_checkpoints(recipe):
    entries = {e.name: e for e in discover.discover_models(recipe / "exp")}
    assert sorted(entries) == ["asr_conbimamba_ctc", "asr_conbimamba_dec", "asr_conformer_ctc"]
    assert all(e.ok and e.kind == "espnet-asr" for e in entries.values())
    assert entries["asr_conbimamba_dec"].tags["decoder"] is True
    assert entries["asr_conbimamba_ctc"].tags["decoder"] is False
    assert entries["asr_conbimamba_dec"].checkpoint.name == "valid.acc.ave.pth"
    assert entries["asr_conbimamba_ctc"].checkpoint.name == "valid.loss.ave.pth"
    assert entries["asr_conformer_ctc"].tags["encoder"] == "conformer"
    assert entries["asr_conbimamba_ctc"].recipe_root == recipe


def test_discover_filters_and_problem_directories(tmp_path):
    exp = tmp_path / "exp"
    (exp / "lm_x").mkdir(parents=True)
    (exp / "lm_x" / "config.yaml").write_text(yaml.safe_dump({"lm": "transformer", "token_list": ["a"]}))
    (exp / "asr_nockpt").mkdir()
    (exp / "asr_nockpt" / "config.yaml").write_text(yaml.safe_dump({"encoder": "conbimamba", "ctc_conf": {}}))
    (exp / "asr_running").mkdir()
    (exp / "asr_running" / "config.yaml").write_text(yaml.safe_dump({"encoder": "conformer", "ctc_conf": {}}))
    (exp / "asr_running" / "1epoch.pth").write_bytes(b"x")
    (exp / "asr_running" / ".started").write_text("sig")
    (exp / "asr_badyaml").mkdir()
    (exp / "asr_badyaml" / "config.yaml").write_text("encoder: [unclosed\n")
    (exp / "mi").mkdir()  # the analysis output is never searched
    (exp / "mi" / "config.yaml").write_text(yaml.safe_dump({"encoder": "x", "ctc_conf": {}}))
    entries = {e.name: e for e in discover.discover_models(exp, exclude=[exp / "mi"])}
    assert set(entries) == {"lm_x", "asr_nockpt", "asr_running", "asr_badyaml"}
    assert entries["lm_x"].kind is None and "language model" in entries["lm_x"].problem
    assert "no checkpoint" in entries["asr_nockpt"].problem
    assert "not finished" in entries["asr_running"].problem
    assert entries["asr_badyaml"].problem.startswith(str(exp / "asr_badyaml" / "config.yaml"))
    assert not any(e.ok for e in entries.values())
    only = discover.discover_models(exp, patterns=["asr_n*"])
    assert [e.name for e in only] == ["asr_nockpt"]
    with pytest.raises(FileNotFoundError, match="not found"):
        discover.discover_models(tmp_path / "missing")


def test_find_checkpoint_preference(tmp_path):
    assert discover.find_checkpoint(tmp_path) is None
    for name in ("3epoch.pth", "12epoch.pth", "checkpoint.pth"):
        (tmp_path / name).write_bytes(b"x")
    assert discover.find_checkpoint(tmp_path).name == "12epoch.pth"
    (tmp_path / "valid.loss.best.pth").write_bytes(b"x")
    assert discover.find_checkpoint(tmp_path).name == "valid.loss.best.pth"
    os.symlink(tmp_path / "gone.pth", tmp_path / "valid.acc.ave.pth")  # broken link: ignored
    assert discover.find_checkpoint(tmp_path).name == "valid.loss.best.pth"
    (tmp_path / "latest.pth").write_bytes(b"x")  # pretrained SSL models: the final checkpoint first
    assert discover.find_checkpoint(tmp_path, prefer=("latest.pth",)).name == "latest.pth"
    assert discover.find_checkpoint(tmp_path).name == "valid.loss.best.pth"


def test_classify_config_families():
    kind, tags, _ = discover.classify_config({"encoder": "conformer", "ctc_conf": {}, "frontend": "s3prl",
                                              "frontend_conf": {"frontend_conf": {"upstream": "mamba_hubert_local"}},
                                              "encoder_conf": {"num_blocks": 12}, "decoder": None})
    assert kind == "espnet-asr" and tags["family"] == "upstream+downstream" and tags["decoder"] is False
    kind, tags, _ = discover.classify_config({"encoder": "conbimamba", "loss": [{"name": "hubert"}], "util": {}})
    assert kind == "espnet-ssl" and tags["family"] == "ssl"
    kind, tags, _ = discover.classify_config({"model": {"embed_dim": 192, "depth": 24}})
    assert kind == "ssamba" and tags["size"] == "tiny"
    assert discover.classify_config({"lm": "seq_rnn"})[0] is None


def test_select_utterances_is_seeded_and_order_free(tmp_path):
    a, b = tmp_path / "a.scp", tmp_path / "b.scp"
    a.write_text("".join(f"u{i:02d} /x/{i}.wav\n" for i in range(0, 10)))
    b.write_text("".join(f"u{i:02d} /x/{i}.wav\n" for i in range(10, 20)))
    first = discover.select_utterances([a, b], 5, seed=3)
    assert len(first) == 5 and first == sorted(first)
    assert discover.select_utterances([b, a], 5, seed=3) == first
    assert discover.select_utterances([a, b], 5, seed=4) != first
    assert len(discover.select_utterances([a], 50, seed=0)) == 10
    a.write_text("u00 /x/0.wav\nu01\n")
    with pytest.raises(ValueError, match=r"a\.scp:2"):
        discover.select_utterances([a], 1, seed=0)
    with pytest.raises(ValueError, match="n_utts"):
        discover.select_utterances([b], 0, seed=0)


def test_default_wav_scps_prefers_dump(recipe, tmp_path):
    assert [p.parent.name for p in discover.default_wav_scps(recipe / "exp")] == ["dev_clean", "test_clean"]
    dump = tmp_path / "dump" / "raw" / "dev_clean"
    dump.mkdir(parents=True)
    (dump / "wav.scp").write_text("u1 x.wav\n")
    (tmp_path / "exp").mkdir()
    assert discover.default_wav_scps(tmp_path / "exp") == [dump / "wav.scp"]


# ---------------------------------------------------------------------- audio
def test_load_audio_file_relative_and_pipe(tmp_path):
    audio = (0.25 * np.sin(np.arange(800) / 7.0)).astype(np.float32)
    soundfile.write(tmp_path / "a.wav", audio, 16000, subtype="FLOAT")
    for spec in ("a.wav", str(tmp_path / "a.wav"), "cat a.wav |"):
        data, rate = features.load_audio(spec, tmp_path, name="u1")
        assert rate == 16000
        np.testing.assert_allclose(data, audio, atol=1e-7)
    with pytest.raises(features.ExtractionError, match="utterance u9.*missing.wav"):
        features.load_audio("missing.wav", tmp_path, name="u9")


# ------------------------------------------------------------------ extraction
@pytest.mark.parametrize("model", ["asr_conbimamba_dec", "asr_conformer_ctc"])
def test_batched_extraction_equals_one_at_a_time(recipe, model):
    entry = {e.name: e for e in discover.discover_models(recipe / "exp")}[model]
    extractor = features.build_extractor(entry, "cpu")
    assert extractor.layer_names == ["X", "1", "2", "3"]
    # ConBiMamba (forward_layers) runs padded batches; the Conformer (hooks) runs one at a time.
    assert extractor.padding_safe == (model == "asr_conbimamba_dec")
    utts = discover.select_utterances(discover.default_wav_scps(recipe / "exp"), 5, seed=0)
    wavs = _wavs(recipe, utts)
    ids = [u for u, _ in utts]
    batched = extractor.extract(wavs, ids)
    alone = _extract_one_by_one(extractor, wavs, ids)
    for layers, reference in zip(batched, alone):
        assert len(layers) == 4
        for got, want in zip(layers, reference):
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_extracted_layers_match_espnet_encode(recipe):
    """X and T_N against ESPnet's own encode() of each utterance alone: real frames only."""
    entry = {e.name: e for e in discover.discover_models(recipe / "exp")}["asr_conbimamba_ctc"]
    extractor = features.build_extractor(entry, "cpu")
    model = extractor.model
    utts = discover.select_utterances(discover.default_wav_scps(recipe / "exp"), 4, seed=1)
    wavs = _wavs(recipe, utts)
    layers = extractor.extract(wavs, [u for u, _ in utts])
    for wav, per_utt in zip(wavs, layers):
        n = torch.tensor([wav.shape[0]])
        with torch.no_grad():
            encoded, olens = model.encode(wav[None], n)
            feats, flens = model._extract_feats(wav[None], n)
            feats, flens = model.normalize(feats, flens)
            embedded, _ = model.encoder.embed(feats, None)
        frames = int(olens[0])
        # ConBiMamba with conv2d subsampling: ((L - 1) // 2 - 1) // 2 frames from L fbank frames.
        assert frames == ((int(flens[0]) - 1) // 2 - 1) // 2
        assert all(t.shape == (frames, 16) for t in per_utt)
        torch.testing.assert_close(per_utt[-1], encoded[0, :frames], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(per_utt[0], embedded[0, :frames], atol=1e-5, rtol=1e-5)


def test_ssamba_extraction(tmp_path):
    helpers.write_data(tmp_path, per_set=2)
    helpers.make_ssamba_model(tmp_path / "exp" / "ssamba_tiny")
    (entry,) = discover.discover_models(tmp_path / "exp")
    assert entry.kind == "ssamba" and entry.tags["size"] == "tiny"
    extractor = features.build_extractor(entry, "cpu")
    assert extractor.layer_names == ["X", "1", "2"]
    utts = discover.select_utterances(discover.default_wav_scps(tmp_path / "exp"), 3, seed=0)
    wavs = _wavs(tmp_path, utts)
    ids = [u for u, _ in utts]
    for layers, reference in zip(extractor.extract(wavs, ids), _extract_one_by_one(extractor, wavs, ids)):
        for got, want in zip(layers, reference):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_broken_checkpoint_raises_extraction_error(tmp_path):
    helpers.make_asr_model(tmp_path / "exp" / "asr_a", decoder=False, checkpoint="valid.loss.ave.pth")
    (tmp_path / "exp" / "asr_a" / "valid.loss.ave.pth").write_bytes(b"not a checkpoint")
    (entry,) = discover.discover_models(tmp_path / "exp")
    with pytest.raises(features.ExtractionError, match="valid.loss.ave.pth: not a model state dict"):
        features.build_extractor(entry, "cpu")
    # A state dict of another model: named keys are reported, nothing is loaded partly.
    torch.save({"encoder.foo": torch.zeros(1)}, tmp_path / "exp" / "asr_a" / "valid.loss.ave.pth")
    with pytest.raises(features.ExtractionError, match="missing"):
        features.build_extractor(entry, "cpu")


# ---------------------------------------------------------------------- helpers
def test_align_frames():
    x = torch.arange(10.0).reshape(5, 2)
    assert features.align_frames(x, 5) is x
    # Fewer frames: r = round(5 / 2) = 2 consecutive frames concatenated.
    torch.testing.assert_close(features.align_frames(x, 2), torch.tensor([[0.0, 1, 2, 3], [4, 5, 6, 7]]))
    # 3 frames from 5: r = 2, the last window repeats the last frame.
    torch.testing.assert_close(features.align_frames(x, 3)[2], torch.tensor([8.0, 9, 8, 9]))
    # More frames: nearest earlier frame.
    torch.testing.assert_close(features.align_frames(x[:2], 4), x[[0, 0, 1, 1]])


class _FakeExtractor(features.LayerExtractor):
    def __init__(self, nan_for=None, layers=3):
        entry = discover.ModelEntry(name="fake", path=Path("."))
        super().__init__(entry, torch.device("cpu"))
        self.layer_names = ["X"] + [str(i) for i in range(1, layers + 1)]
        self.padding_safe = True
        self.nan_for = nan_for
        self.calls = []

    def extract(self, wavs, utt_ids):
        self.calls.append(list(utt_ids))
        out = []
        for w, u in zip(wavs, utt_ids):
            n = max(1, w.shape[0] // 160)
            layers = [torch.full((n, 2), float(i)) + torch.arange(n)[:, None] for i in range(len(self.layer_names))]
            if u == self.nan_for:
                layers[2][0, 0] = float("nan")
            out.append(layers)
        return out


def test_feature_cache_roundtrip_crop_and_float16_overflow(tmp_path):
    helpers.write_data(tmp_path, sets=("dev_clean",), per_set=3)
    utts = discover.select_utterances([tmp_path / "data" / "dev_clean" / "wav.scp"], 3, seed=0)
    extractor = _FakeExtractor()
    done = []
    store = features.extract_features(extractor, utts, tmp_path / "c.features", {"identity": {"k": 1}}, tmp_path,
                                      batch_size=2, max_frames=7, progress=done.append)
    assert sum(done) == 3 and [len(c) for c in extractor.calls] == [2, 1]
    assert store.meta["identity"] == {"k": 1} and store.meta["layer_names"] == ["X", "1", "2", "3"]
    assert sorted(store.utt_ids) == [u for u, _ in utts]
    for utt in store.utt_ids:
        for layer in range(4):
            array = store.get(utt, layer)
            assert array.dtype == np.float16 and array.shape == (7, 2)
            np.testing.assert_array_equal(array[:, 0], layer + np.arange(7))
    reopened = features.FeatureStore(tmp_path / "c.features")
    assert reopened.utt_ids == store.utt_ids
    assert not (tmp_path / "c.features.tmp").exists() and not list(tmp_path.glob("*.tmp"))
    for utt in store.utt_ids:  # every layer runs at X's frame rate: X itself is its pair
        x, t = store.pair(utt, 2)
        assert store.x_index(utt, 2) == 0 and np.array_equal(x, store.get(utt, 0))

    with feature_cache.feature_writer(tmp_path / "big.features") as writer:
        writer.add("u", [np.array([[1.0e6, 1.0]]), np.array([[0.5, 0.25]])])
        writer.finish({})
    big = features.FeatureStore(tmp_path / "big.features")
    assert big.get("u", 0).dtype == np.float32 and big.get("u", 0)[0, 0] == 1.0e6
    assert big.get("u", 1).dtype == np.float16

    # An interrupted write leaves no footer: not accepted as a cache.
    (tmp_path / "half.features").write_bytes(b"MAMBAMI\x01" + b"\0" * 100)
    with pytest.raises(ValueError, match="incomplete"):
        features.FeatureStore(tmp_path / "half.features")


def test_nan_features_raise_and_leave_no_cache(tmp_path):
    helpers.write_data(tmp_path, sets=("dev_clean",), per_set=3)
    utts = discover.select_utterances([tmp_path / "data" / "dev_clean" / "wav.scp"], 3, seed=0)
    bad = utts[1][0]
    with pytest.raises(features.ExtractionError, match=f"utterance {bad}: layer 2 has NaN"):
        features.extract_features(_FakeExtractor(nan_for=bad), utts, tmp_path / "c.features", {}, tmp_path)
    assert not (tmp_path / "c.features").exists() and not (tmp_path / "c.features.tmp").exists()


def test_register_extractor_rejects_a_second_class_for_a_kind():
    with pytest.raises(ValueError, match="already registered"):
        features.register_extractor("espnet-asr")(type("Other", (features.LayerExtractor,), {}))


def test_ssl_finetuned_and_upstream_downstream_extraction(tmp_path):
    """Mamba-HuBERT of the SSL task, its CTC fine-tuning (hubert_finetune), and an ASR model
    on it as S3PRL upstream + Conformer (stage 12)."""
    exp = helpers.make_stage12_recipe(tmp_path)
    entries = {e.name: e for e in discover.discover_models(exp)}
    ft_entry, up_entry = entries["ft_mamba_hubert_it2_L9"], entries["s3prl_conformer_mamba_hubert_it2_L9"]
    assert ft_entry.tags["family"] == "upstream" and up_entry.tags["family"] == "upstream+downstream"
    for e in (ft_entry, up_entry):
        assert e.tags["label_layer"] == 9 and e.tags["pretrained"] == "ssl_mamba_hubert_it2_L9"
        assert e.tags["pretrained_encoder"] == "conbimamba"
    ssl = features.build_extractor(entries["ssl_mamba_hubert_it2_L9"], "cpu")
    ft = features.build_extractor(ft_entry, "cpu")
    up = features.build_extractor(up_entry, "cpu")
    assert ssl.layer_names == ft.layer_names == ["X", "1", "2", "3"] and ssl.padding_safe and ft.padding_safe
    assert up.layer_names == ["X", "up1", "up2", "up3", "enc1", "enc2"] and up.boundary == 3
    utts = discover.select_utterances(discover.default_wav_scps(exp), 3, seed=0)
    wavs = _wavs(tmp_path, utts)
    ids = [u for u, _ in utts]
    ssl_layers = ssl.extract(wavs, ids)
    for layers, reference in zip(ssl_layers, _extract_one_by_one(ssl, wavs, ids)):
        for got, want in zip(layers, reference):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for mine, tuned, stacked in zip(ssl_layers, ft.extract(wavs, ids), up.extract(wavs, ids)):
        # Both stage-12 models hold the same pretrained weights (no training here).
        for a, b, c in zip(mine, tuned, stacked[:4]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
        # The Conformer (conv2d2 input layer) runs at half the upstream's frame rate.
        n_up, n_enc = stacked[0].shape[0], stacked[4].shape[0]
        assert stacked[5].shape[0] == n_enc and round(n_up / n_enc) == 2
        assert features.align_frames(stacked[0], n_enc).shape == (n_enc, 32)


def test_cache_pairs_x_with_each_layer_at_extraction(tmp_path):
    """An upstream + downstream model: the cache holds X paired with the downstream's
    frames, cropped with the layers, equal to aligning the cached X afterwards."""
    exp = helpers.make_stage12_recipe(tmp_path)
    (entry,) = [e for e in discover.discover_models(exp) if e.name == "s3prl_conformer_mamba_hubert_it2_L9"]
    utts = discover.select_utterances(discover.default_wav_scps(exp), 2, seed=0)
    stores = {}
    for max_frames in (None, 12):
        stores[max_frames] = store = features.extract_features(
            features.build_extractor(entry, "cpu"), utts, tmp_path / f"c{max_frames}.features", {}, tmp_path,
            max_frames=max_frames)
        assert store.meta["layer_names"] == ["X", "up1", "up2", "up3", "enc1", "enc2"]
        for utt in store.utt_ids:
            x = store.get(utt, 0)
            assert store.x_index(utt, 1) == store.x_index(utt, 3) == 0
            assert store.x_index(utt, 4) == store.x_index(utt, 5) == 6  # one aligned copy after the layers
            paired, t = store.pair(utt, 5)
            assert paired.shape == (t.shape[0], 2 * x.shape[1])
            expected = pairing.align_frames(torch.from_numpy(np.array(x)), t.shape[0]).numpy()
            np.testing.assert_array_equal(paired, expected)
    for utt in stores[12].utt_ids:
        full_x, full_t = stores[None].pair(utt, 5)
        x, t = stores[12].pair(utt, 5)
        assert stores[12].get(utt, 0).shape[0] == 12
        assert t.shape[0] == math.ceil(12 * full_t.shape[0] / stores[None].get(utt, 0).shape[0])
        np.testing.assert_array_equal(t, full_t[: t.shape[0]])


def test_pair_with_layers_shares_one_x_per_frame_rate():
    x = torch.arange(12.0).reshape(6, 2)
    layers = [x, torch.zeros(6, 3), torch.zeros(3, 4), torch.zeros(3, 1), torch.zeros(12, 1)]
    extra, x_index = pairing.pair_with_layers(layers)
    assert x_index == [0, 5, 5, 6]
    torch.testing.assert_close(extra[0], pairing.align_frames(x, 3))
    torch.testing.assert_close(extra[1], x[torch.arange(12) // 2])


def test_feature_writer_leaves_nothing_without_finish_or_on_error(tmp_path):
    with pytest.raises(RuntimeError, match="without finish"):
        with feature_cache.feature_writer(tmp_path / "a.features") as writer:
            writer.add("u", [np.ones((2, 2)), np.ones((2, 1))])
    with pytest.raises(KeyError):
        with feature_cache.feature_writer(tmp_path / "b.features") as writer:
            writer.add("u", [np.ones((2, 2)), np.ones((2, 1))])
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="x_index"):
        with feature_cache.feature_writer(tmp_path / "c.features") as writer:
            writer.add("u", [np.ones((2, 2)), np.ones((2, 1))], x_index=[3])


def test_store_refuses_a_cache_of_another_format(tmp_path):
    path = tmp_path / "old.features"
    with feature_cache.feature_writer(path) as writer:
        writer.add("u", [np.ones((2, 2)), np.ones((2, 1))])
        writer.finish({})
    data = path.read_bytes().replace(b'"version": 2', b'"version": 1')
    path.write_bytes(data)
    with pytest.raises(ValueError, match="format 1.*extract again"):
        features.FeatureStore(path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_extraction_matches_cpu(recipe):
    entry = {e.name: e for e in discover.discover_models(recipe / "exp")}["asr_conbimamba_dec"]
    utts = discover.select_utterances(discover.default_wav_scps(recipe / "exp"), 3, seed=0)
    wavs = _wavs(recipe, utts)
    ids = [u for u, _ in utts]
    on_cpu = features.build_extractor(entry, "cpu").extract(wavs, ids)
    on_gpu = features.build_extractor(entry, "cuda").extract(wavs, ids)
    for a, b in zip(on_cpu, on_gpu):
        for x, y in zip(a, b):
            assert y.device.type == "cpu"
            torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
