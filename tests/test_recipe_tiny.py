"""The whole recipe on the tiny mini corpus (both --use_decoder values, stages 1-13).

The run itself is the session fixture ``tiny_recipe`` of conftest.py: a copy of the
recipe under a temporary directory (the repository stays clean) with the repository's
virtual environment. Takes a few minutes on a CPU.
"""

import math
import re
import shutil

import pytest

from conftest import copy_recipe, needs_recipe_tools, run_tiny

pytestmark = needs_recipe_tools


def test_results_table_has_finite_wers_for_both_rows(tiny_recipe):
    recipe, _ = tiny_recipe
    text = (recipe / "RESULTS.md").read_text()
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\| ([+-] Decoder) \| ([^|]+)\| ([^|]+)\| ([^|]+)\| ([^|]+)\|", line)
        if m:
            rows[m.group(1)] = [float(v) for v in m.groups()[1:]]
    assert set(rows) == {"+ Decoder", "- Decoder"}
    for wers in rows.values():
        assert len(wers) == 4 and all(math.isfinite(w) and w >= 0 for w in wers)
    assert "| Snt | Wrd | Corr | Sub | Del | Ins | Err | S.Err |" in text
    assert "espnet:" in text and "python:" in text


def test_outputs_of_every_stage(tiny_recipe):
    recipe, runs = tiny_recipe
    assert (recipe / "exp" / "ngram" / "4gram.bin").stat().st_size > 0
    tokens = (recipe / "data" / "token_list" / "bpe_unigram40" / "tokens.txt").read_text().split()
    assert tokens[:2] == ["<blank>", "<unk>"] and tokens[-1] == "<sos/eos>"
    for exp in ("asr_train_asr_conbimamba", "asr_train_asr_conbimamba_nodec"):
        assert (recipe / "exp" / exp / ".done").exists()
        results = list((recipe / "exp" / exp).glob("decode_*/test_other/score_wer/result.txt"))
        assert len(results) == 1 and "| Snt | Wrd |" in results[0].read_text()
        assert "\nchance: WER " in results[0].read_text()
    assert "conbimamba" in (recipe / "exp" / "asr_train_asr_conbimamba" / "config.yaml").read_text()
    # the second run reused the data, tokens, n-gram and statistics of the first
    second = runs["true"]
    for done in ("(data/.done); skipping", "dump/raw/org/train_clean_100: complete (.done); skipping",
                 "data/token_list/bpe_unigram40: complete (.done); skipping", "exp/ngram: complete (.done); skipping",
                 "exp/asr_stats_raw_en_bpe40: complete (.done); skipping"):
        assert done in second, done
    assert "Successfully finished." in second


def test_decoding_with_ngram_and_neural_lm(tiny_recipe):
    recipe, _ = tiny_recipe
    out = run_tiny(recipe, "--stage", "6", "--stop_stage", "10", "--use_ngram", "true", "--use_lm", "true")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    lm_exp = recipe / "exp" / "lm_train_lm_transformer_bpe40"
    assert (lm_exp / ".done").exists() and (lm_exp / "valid.loss.ave.pth").exists()
    decode = recipe / "exp" / "asr_train_asr_conbimamba" / "decode_asr_ngram4_lm_train_lm_transformer_bpe40_asr_model_valid.acc.ave"
    assert (decode / "test_clean" / "score_wer" / "result.txt").exists()
    log = "".join(p.read_text() for p in (decode / "logdir").glob("asr_inference.*.log"))
    assert "--ngram_file exp/ngram/4gram.bin" in log and "--lm_file" in log
    assert "decode_asr_ngram4_lm_train_lm_transformer_bpe40" in (recipe / "RESULTS.md").read_text()


def test_rerun_of_finished_stages_skips(tiny_recipe):
    recipe, _ = tiny_recipe
    out = run_tiny(recipe, "--stage", "3", "--stop_stage", "10")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "exp/asr_train_asr_conbimamba: trained (.done); skipping" in out.stdout
    assert "dev_clean: complete (.done); skipping" in out.stdout
    assert "Training; follow it" not in out.stdout and "utterances) in" not in out.stdout


def test_failure_names_stage_log_and_resume_command(tiny_recipe, tmp_path):
    recipe, _ = tiny_recipe
    # a corrupt flac in a copy of the data: stage 3 must stop and say how to resume
    work = copy_recipe(tmp_path)
    shutil.copytree(recipe / "data", work / "data", symlinks=True)
    wav_scp = work / "data" / "test_clean" / "wav.scp"
    utt, _ = wav_scp.read_text().splitlines()[0].split(maxsplit=1)
    broken = tmp_path / "broken.flac"
    broken.write_bytes(b"fLaC" + b"\x00" * 100)
    lines = wav_scp.read_text().splitlines()
    lines[0] = f"{utt} {broken}"
    wav_scp.write_text("\n".join(lines) + "\n")
    out = run_tiny(work, "--stage", "3", "--stop_stage", "3")
    assert out.returncode != 0
    logs = "".join(p.read_text() for p in (work / "dump" / "raw" / "test_clean" / "logs").glob("dump.*.log"))
    assert f"{utt}: unreadable or corrupt audio {broken}" in logs
    assert "Error: stage 3 failed" in out.stderr
    assert "See the log: dump/raw/test_clean/logs/dump.*.log" in out.stderr
    assert "resume with: ./run.sh --mini_preset tiny --train_threads 1 --stop_stage 3 --stage 3" in out.stderr


def test_bad_option_stops_at_once(tiny_recipe):
    recipe, _ = tiny_recipe
    out = run_tiny(recipe, "--use_decoder", "maybe", "--stage", "20")
    assert out.returncode != 0 and "true or false" in out.stdout + out.stderr
    out = run_tiny(recipe, "--nbpe", "0", "--stage", "20")
    assert out.returncode != 0 and "--nbpe must be a positive integer" in out.stderr


def test_speed_perturbation_stages_2_to_4(tiny_recipe):
    recipe, _ = tiny_recipe
    out = run_tiny(recipe, "--speed_perturb_factors", "0.9 1.0 1.1", "--dumpdir", "dump_sp", "--stage", "2",
               "--stop_stage", "4")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    sp = recipe / "data" / "train_clean_100_sp"
    utts = [line.split()[0] for line in (sp / "wav.scp").read_text().splitlines()]
    base = [line.split()[0] for line in (recipe / "data" / "train_clean_100" / "wav.scp").read_text().splitlines()]
    assert sorted(utts) == sorted(base + [f"sp{f}-{u}" for f in ("0.9", "1.1") for u in base])
    nums = dict(line.split() for line in (recipe / "dump_sp" / "raw" / "train_clean_100_sp" / "utt2num_samples")
                .read_text().splitlines())
    u = base[0]
    assert abs(int(nums[f"sp0.9-{u}"]) * 0.9 - int(nums[u])) < 0.01 * int(nums[u])
    assert abs(int(nums[f"sp1.1-{u}"]) * 1.1 - int(nums[u])) < 0.01 * int(nums[u])
    text = (recipe / "dump_sp" / "raw" / "train_clean_100_sp" / "text").read_text()
    assert text.count(text.splitlines()[0].split(maxsplit=1)[1]) == 3
