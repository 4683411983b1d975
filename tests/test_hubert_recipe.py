"""Recipe helpers of stages 11-12: local/make_table2.py (Table II) and local/hubert_config.py."""

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

RECIPE = Path(__file__).resolve().parent.parent / "egs2" / "librispeech_100" / "mamba_mi"


def load_local(name):
    spec = importlib.util.spec_from_file_location(name, RECIPE / "local" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


table2 = load_local("make_table2")
hubert_config = load_local("hubert_config")


def write_result(exp_dir: Path, exp: str, decode: str, dset: str, err: float, above_chance=None):
    out = exp_dir / exp / decode / dset / "score_wer"
    out.mkdir(parents=True)
    (out / "result.json").write_text(json.dumps({"Err": err, "snt": 1, "wrd": 10, "above_chance": above_chance}))


def test_table2_names_the_sets_at_chance_level(tmp_path):
    exp = tmp_path / "exp"
    write_result(exp, "ft_hubert_it2_L6", "decode_ctc_valid.loss.ave", "test_clean", 30.0, True)
    write_result(exp, "ft_hubert_it2_L6", "decode_ctc_valid.loss.ave", "test_other", 95.0, False)
    write_result(exp, "ft_hubert_it2_L6", "decode_ctc_ngram_valid.loss.ave", "test_clean", 20.0, True)
    write_result(exp, "ft_hubert_it2_L6", "decode_ctc_ngram_valid.loss.ave", "test_other", 40.0, True)
    write_result(exp, "s3prl_conformer_hubert_it2_L6", "decode_conformer_valid.acc.ave", "test_clean", 150.0)
    text = table2.render(table2.collect(exp), ["test_clean", "test_other"])
    assert "| HuBERT (L6) fine-tuned, no LM | 30.0 | 95.0 | - | - | ft_hubert_it2_L6 | decode_ctc_valid.loss.ave | test_other |" in text
    assert "| HuBERT (L6) fine-tuned + 4-gram | 20.0 | 40.0 | 3.4 | 8.1 | ft_hubert_it2_L6 | decode_ctc_ngram_valid.loss.ave | - |" in text
    assert "| HuBERT (L6) + Conformer | 150.0 | - | 9.3 | 15.1 | s3prl_conformer_hubert_it2_L6 | decode_conformer_valid.acc.ave | ? |" in text
    assert "No better than chance:" in text


def test_table2_rows_and_paper_numbers(tmp_path):
    exp = tmp_path / "exp"
    write_result(exp, "ft_mamba_hubert_it2_L9", "decode_ctc_ngram_valid.loss.ave", "test_clean", 12.34)
    write_result(exp, "ft_mamba_hubert_it2_L9", "decode_ctc_ngram_valid.loss.ave", "test_other", 20.0)
    write_result(exp, "ft_mamba_hubert_it2_L9", "decode_ctc_valid.loss.ave", "test_clean", 15.0)
    write_result(exp, "s3prl_conformer_hubert_it2_L6", "decode_conformer_valid.acc.ave", "test_other", 9.5)
    write_result(exp, "asr_conbimamba", "decode_asr", "test_clean", 1.0)  # Table I: not ours
    write_result(exp, "ft_mamba_hubert_it2_L6", "decode_other", "test_clean", 1.0)  # unknown decoding
    entries = table2.collect(exp)
    assert [(e["exp"], e["kind"]) for e in entries] == [
        ("ft_mamba_hubert_it2_L9", "ngram"),
        ("ft_mamba_hubert_it2_L9", "nolm"),
        ("s3prl_conformer_hubert_it2_L6", "conformer"),
    ]
    text = table2.render(entries, ["test_clean", "test_other"])
    assert "| Mamba-HuBERT (L9) fine-tuned + 4-gram | 12.3 | 20.0 | 12.32 | 19.56 |" in text
    assert "| Mamba-HuBERT (L9) fine-tuned, no LM | 15.0 | - | - | - |" in text
    assert "| HuBERT (L6) + Conformer | - | 9.5 | 9.3 | 15.1 |" in text
    assert text.startswith(table2.BEGIN) and text.endswith(table2.END)


def test_table2_rows_of_a_variant(tmp_path):
    exp = tmp_path / "exp"
    write_result(exp, "ft_mamba_hubert_nopos_it2_L6", "decode_ctc_ngram_valid.loss.ave", "test_clean", 30.0)
    write_result(exp, "ft_mamba_hubert_it2_L6", "decode_ctc_ngram_valid.loss.ave", "test_clean", 20.0)
    write_result(exp, "s3prl_conformer_hubert_x_y_it2_L6", "decode_conformer_valid.acc.ave", "test_clean", 1.0)
    entries = table2.collect(exp)
    assert [(e["exp"], e["variant"]) for e in entries] == [
        ("ft_mamba_hubert_it2_L6", ""), ("ft_mamba_hubert_nopos_it2_L6", "nopos")]
    text = table2.render(entries, ["test_clean", "test_other"])
    assert "| Mamba-HuBERT (L6) fine-tuned + 4-gram | 20.0 | - | 16.68 | 25.21 |" in text
    assert "| Mamba-HuBERT nopos (L6) fine-tuned + 4-gram | 30.0 | - | - | - |" in text  # no paper numbers


def test_table2_section_keeps_the_rest_of_results(tmp_path):
    results = tmp_path / "RESULTS.md"
    table_i = "# Results\n\n## Table I: WER (%)\n\n| Model | dev |\n|---|---|\n| + Decoder | 5.9 |\n"
    results.write_text(table_i)
    args = ["--exp_dir", str(tmp_path / "exp"), "--out", str(results)]
    assert table2.main(args) == 0
    first = results.read_text()
    assert first.startswith(table_i) and "(no scored downstream decoding found)" in first
    write_result(tmp_path / "exp", "ft_hubert_it2_L6", "decode_ctc_valid.loss.ave", "test_clean", 7.0)
    assert table2.main(args) == 0
    second = results.read_text()
    assert second.startswith(table_i) and second.count(table2.END) == 1
    assert "| HuBERT (L6) fine-tuned, no LM | 7.0 |" in second
    # another writer appends after the section: both survive a rewrite
    results.write_text(second + "\n## Table III\n")
    assert table2.main(args) == 0
    third = results.read_text()
    assert third.startswith(table_i) and third.endswith("\n## Table III\n") and third.count(table2.END) == 1


def test_table2_broken_markers(tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    results.write_text(f"x\n{table2.BEGIN}\nno end\n")
    assert table2.main(["--exp_dir", str(tmp_path), "--out", str(results)]) == 1
    assert "RESULTS.md" in capsys.readouterr().err
    assert results.read_text() == f"x\n{table2.BEGIN}\nno end\n"  # untouched
    with pytest.raises(ValueError, match="markers are broken"):
        table2.replace_section(f"{table2.END}\n{table2.BEGIN}\n", "s")


def test_hubert_config_sets_num_classes(tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("0\n1\n2\n<unk>\n")
    base = tmp_path / "base.yaml"
    loss = [{"name": "hubert", "conf": {"num_classes": 500, "final_dim": 256}}]
    base.write_text(yaml.safe_dump({"encoder": "conbimamba", "loss": loss}))
    out = tmp_path / "out.yaml"
    assert hubert_config.main([str(base), str(tokens), str(out)]) == 0
    config = yaml.safe_load(out.read_text())
    assert config["loss"] == [{"name": "hubert", "conf": {"num_classes": 3, "final_dim": 256}}]
    assert config["encoder"] == "conbimamba"


@pytest.mark.parametrize("tokens", ["0\n1\n", "0\n2\n<unk>\n", "a\nb\n<unk>\n", "0\n1\n2\n"])
def test_hubert_config_rejects_other_token_lists(tmp_path, tokens):
    (tmp_path / "tokens.txt").write_text(tokens)
    with pytest.raises(ValueError, match="not a k-means token list"):
        hubert_config.num_clusters(tmp_path / "tokens.txt")


def test_hubert_config_rejects_non_hubert_configs():
    with pytest.raises(ValueError, match="no 'loss' entry named 'hubert'"):
        hubert_config.make_config({"loss": [{"name": "data2vec"}]}, 10)


def test_recipe_configs_are_consistent():
    """Every SSL config is a HuBERT SSL config; mini/tiny models have the 12 layers that L6/L9 need."""
    from espnet_mamba.ssl.model import check_ssl_config

    for path in sorted((RECIPE / "conf" / "ssl").rglob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        check_ssl_config(dict(config, token_list=["0", "<unk>"]), source=path)
        assert config["encoder_conf"]["num_blocks"] == 12, path
        assert config["collate_fn_conf"]["label_downsampling"] == 1, path
        shapes = config.get("frontend_conf", {}).get("shapes")
        if shapes is not None:  # HuBERT's kernels and strides: the labels' frame rate
            assert [s[1:] for s in shapes] == [[10, 5], [3, 2], [3, 2], [3, 2], [3, 2], [2, 2], [2, 2]], path
    for size in ("", "mini", "tiny"):
        conf = RECIPE / "conf" / "downstream" / size
        conformer = yaml.safe_load((conf / "conformer_s3prl.yaml").read_text())
        ssl = yaml.safe_load((RECIPE / "conf" / "ssl" / size / (
            "mamba_hubert_it2.yaml" if not size else "mamba_hubert.yaml")).read_text())
        assert conformer["preencoder_conf"]["input_size"] == ssl["encoder_conf"]["output_size"]
        assert conformer["frontend_conf"]["multilayer_feature"] is True
        assert conformer["freeze_param"] == ["frontend.upstream"]
        finetune = yaml.safe_load((conf / "finetune_ctc.yaml").read_text())
        assert finetune["input_size"] == 1 and finetune["encoder"] == "hubert_finetune"
        assert finetune["model_conf"]["ctc_weight"] == 1.0
