"""Bad input to the recipe (run.sh): each case stops with exit status 1 and a message on
stderr that names the option or file and the problem, before any work (nothing is
written) or, for a stage whose inputs are missing, before that stage does anything.

The stages that run here are cheap: stage 3 on a hand-made data dir and stage 9 with a
fake decoder (``fake_asr_inference``, written into the recipe copy) on a hand-made
experiment. tests/test_slurm.py runs the same decoding through Slurm.
"""

import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import RECIPE_ENV, copy_recipe

TEST_SETS = ("dev_clean", "dev_other", "test_clean", "test_other")
# the experiment and decoding directories of the default mini preset (+ Decoder)
ASR_EXP = Path("exp/asr_train_asr_conbimamba")
DECODE_DIR = ASR_EXP / "decode_asr_asr_model_valid.acc.ave"

FAKE_DECODER = textwrap.dedent(
    '''\
    """A stand-in for ESPnet's asr_inference: the "audio" files hold their transcripts."""
    import argparse
    import os
    import sys

    parser = argparse.ArgumentParser()
    parser.add_argument("--data_path_and_name_and_type", required=True)
    parser.add_argument("--key_file", required=True)
    parser.add_argument("--output_dir", required=True)
    args, _ = parser.parse_known_args()
    wav_scp = dict(line.split(maxsplit=1) for line in open(args.data_path_and_name_and_type.split(",")[0]))
    keys = [line.split()[0] for line in open(args.key_file)]
    os.makedirs(os.path.join(args.output_dir, "1best_recog"), exist_ok=True)
    with open(os.path.join(args.output_dir, "1best_recog", "text"), "w") as out:
        for key in keys:
            words = open(wav_scp[key].strip()).read().strip()
            if words == "BROKEN":
                sys.exit(f"fake decoder: cannot decode {key}")
            out.write(f"{key} {words.lower()}\\n")
    print(f"decoded {len(keys)} utterances")
    '''
)


def run_recipe(recipe: Path, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(["./run.sh", *args], cwd=recipe, capture_output=True, text=True, env=env or RECIPE_ENV)


def make_decodable(recipe: Path, utts_per_set: int = 3) -> dict:
    """What stage 9 reads, made by hand: dump/raw/<set>/{wav.scp,text} whose "audio"
    files hold the words, a trained-looking experiment and the fake decoder. Returns
    {set: {utt: the hypothesis the fake decoder gives}}."""
    expected = {}
    for dset in TEST_SETS:
        data = recipe / "dump" / "raw" / dset
        audio = recipe / "audio" / dset
        data.mkdir(parents=True)
        audio.mkdir(parents=True)
        wav_scp, text, expected[dset] = [], [], {}
        for i in range(utts_per_set):
            utt = f"{dset}-{i:02d}"
            words = f"WORD{i} OF {dset.upper()}"
            (audio / f"{utt}.txt").write_text(words + "\n")
            wav_scp.append(f"{utt} {audio / f'{utt}.txt'}\n")
            text.append(f"{utt} {words}\n")
            expected[dset][utt] = words.lower()
        (data / "wav.scp").write_text("".join(wav_scp))
        (data / "text").write_text("".join(text))
    exp = recipe / ASR_EXP
    exp.mkdir(parents=True)
    (exp / "config.yaml").write_text("encoder: conbimamba\n")
    (exp / "valid.acc.ave.pth").write_bytes(b"not read by the fake decoder")
    (exp / ".done").write_text("config=made by hand\n")
    (recipe / "fake_asr_inference.py").write_text(FAKE_DECODER)
    return expected


def decode_args(*extra: str) -> tuple:
    return ("--stage", "9", "--stop_stage", "9", "--asr_inference_module", "fake_asr_inference", *extra)


def read_hypotheses(recipe: Path, dset: str) -> dict:
    lines = (recipe / DECODE_DIR / dset / "text").read_text().splitlines()
    return dict(line.split(maxsplit=1) for line in lines)


@pytest.fixture(scope="module")
def clean_recipe(tmp_path_factory):
    return copy_recipe(tmp_path_factory.mktemp("reliability"))


# (options, words the error message must hold): every case fails in the checks, before any work
BAD_OPTIONS = [
    (["--stage", "abc"], ["--stage must be an integer from 1 to 13", "'abc'"]),
    (["--stop_stage", "abc"], ["--stop_stage must be an integer from 1 to 13", "'abc'"]),
    (["--stage=x1"], ["--stage must be an integer from 1 to 13", "'x1'"]),
    (["--stage", "14"], ["--stage must be an integer from 1 to 13", "'14'"]),
    (["--stage", "0"], ["--stage must be an integer from 1 to 13", "'0'"]),
    (["--stop_stage", "20"], ["--stop_stage must be an integer from 1 to 13", "'20'"]),
    (["--stage", "5", "--stop_stage", "3"], ["--stage 5 comes after --stop_stage 3"]),
    (["--stage"], ["option --stage needs a value"]),
    (["--PATH", "/x"], ["invalid option --PATH", "not an option of mamba_mi.sh"]),
    (["--help_message", "x"], ["invalid option --help_message"]),
    (["--resume_cmd", "rm"], ["invalid option --resume_cmd"]),
    (["--no_such_option", "1"], ["invalid option --no_such_option"]),
    (["unexpected"], ["unexpected arguments: unexpected"]),
    (["--config", "missing.conf"], ["--config: no such file missing.conf"]),
    (["--use_decoder", "maybe"], ["--use_decoder takes true or false", "'maybe'"]),
    (["--corpus", "timit"], ["--corpus must be mini or librispeech", "'timit'"]),
    (["--mini_preset", "huge"], ["--mini_preset must be tiny or default", "'huge'"]),
    (["--nj", "two"], ["--nj must be a positive integer", "'two'"]),
    (["--ngpu", "-1"], ["--ngpu must be a non-negative integer", "'-1'"]),
    (["--nbpe", "0"], ["--nbpe must be a positive integer", "'0'"]),
    (["--mini_train_utts", "many"], ["--mini_train_utts must be a positive integer", "'many'"]),
    (["--min_wav_duration", "short"], ["--min_wav_duration must be a non-negative number", "'short'"]),
    (["--speed_perturb_factors", "0.9 fast"], ["--speed_perturb_factors must hold positive numbers", "'fast'"]),
    (["--bpemode", "wordpiece"], ["--bpemode must be unigram or bpe", "'wordpiece'"]),
    (["--hubert_label_layer", "6 nine"], ["--hubert_label_layer must hold layer numbers", "'nine'"]),
    (["--test_sets", "dev_clean bogus"], ["--test_sets: unknown set bogus", "data/bogus/wav.scp does not exist"]),
    (["--valid_set", "devel"], ["--valid_set: unknown set devel"]),
    (["--test_sets", " "], ["--test_sets is empty"]),
    (["--lm_train_text", "no_such_text"], ["--lm_train_text no_such_text: no such file"]),
    (["--bpe_train_text", "no_such_text"], ["--bpe_train_text no_such_text: no such file"]),
    (["--asr_config", "no_such.yaml"], ["--asr_config 'no_such.yaml': no such file"]),
    (["--use_lm", "true", "--lm_config", ""], ["--use_lm true needs --lm_config FILE"]),
    (["--librispeech_dir", "/data/LibriSpeech"], ["--librispeech_dir is for --corpus librispeech"]),
]


@pytest.mark.parametrize("args,expected", BAD_OPTIONS, ids=[" ".join(a) or "empty" for a, _ in BAD_OPTIONS])
def test_bad_option_fails_before_any_work(clean_recipe, args, expected):
    out = run_recipe(clean_recipe, *args)
    assert out.returncode == 1, out.stdout + out.stderr
    for words in expected:
        assert words in out.stderr, (words, out.stderr)
    assert "Error:" in out.stderr and "Successfully finished" not in out.stdout
    assert "Stage 1" not in out.stdout
    written = sorted(p.name for p in clean_recipe.iterdir()
                     if p.name not in {"conf", "local", "utils", "path.sh", "cmd.sh", "run.sh", "mamba_mi.sh"})
    assert written == []


@pytest.mark.parametrize("stage,missing,hint", [
    ("3", "data/train_clean_100/wav.scp", "run stage 1 first"),
    ("4", "dump/raw/org/train_clean_100/.done", "run stage 3 first"),
    ("5", "dump/raw/train_clean_100/text", "run stage 4 first"),
    ("6", "data/token_list/bpe_unigram150/.done", "run stage 5 first"),
    ("7", "dump/raw/train_clean_100/.done", "run stage 4 first"),
    ("8", "exp/asr_stats_raw_en_bpe150/.done", "run stage 7 first"),
    ("9", f"{ASR_EXP}/.done", "run stage 8 first"),
    ("10", f"{DECODE_DIR}/dev_clean has no complete decoding", "run stage 9 first"),
])
def test_stage_before_its_inputs_names_the_missing_file(clean_recipe, stage, missing, hint):
    out = run_recipe(clean_recipe, "--stage", stage, "--stop_stage", stage)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"{missing}" in out.stderr and hint in out.stderr, out.stderr
    assert f"Error: stage {stage} failed" in out.stderr
    assert f"resume with: ./run.sh --stop_stage {stage} --stage {stage}" in out.stderr


def test_data_dir_without_transcripts(tmp_path):
    recipe = copy_recipe(tmp_path)
    for dset in ("train_clean_100", "dev", *TEST_SETS):
        (recipe / "data" / dset).mkdir(parents=True)
        (recipe / "data" / dset / "wav.scp").write_text(f"{dset}-1 /audio/{dset}-1.flac\n")
        if dset != "test_other":
            (recipe / "data" / dset / "text").write_text(f"{dset}-1 A WORD\n")
    out = run_recipe(recipe, "--stage", "3", "--stop_stage", "3")
    assert out.returncode == 1
    assert "data/test_other/text is missing: run stage 1 first" in out.stderr
    assert not (recipe / "dump").exists()


def test_decoding_stage_writes_each_set_and_skips_when_done(tmp_path):
    recipe = copy_recipe(tmp_path)
    expected = make_decodable(recipe)
    out = run_recipe(recipe, *decode_args("--inference_nj", "2"))
    assert out.returncode == 0, out.stdout + out.stderr
    for dset in TEST_SETS:
        assert read_hypotheses(recipe, dset) == expected[dset]
        assert (recipe / DECODE_DIR / dset / "ref").read_text() == (recipe / "dump/raw" / dset / "text").read_text()
        assert (recipe / DECODE_DIR / dset / ".done").exists()
    logs = sorted((recipe / DECODE_DIR / "logdir").glob("asr_inference.*.log"))
    assert [p.name for p in logs] == ["asr_inference.1.log", "asr_inference.2.log"]
    assert sum(int(p.read_text().split("decoded ")[1].split()[0]) for p in logs) == 3 * len(TEST_SETS)
    again = run_recipe(recipe, *decode_args("--inference_nj", "2"))
    assert again.returncode == 0
    assert again.stdout.count("complete (.done); skipping") == len(TEST_SETS)
    assert "utterances) in" not in again.stdout


def test_decoding_failure_names_the_log_and_the_resume_command(tmp_path):
    recipe = copy_recipe(tmp_path)
    make_decodable(recipe)
    (recipe / "audio" / "test_other" / "test_other-01.txt").write_text("BROKEN\n")
    out = run_recipe(recipe, *decode_args("--inference_nj", "1"))
    assert out.returncode == 1
    assert f"decoding failed; see {DECODE_DIR}/logdir/asr_inference.*.log" in out.stderr
    assert "Error: stage 9 failed" in out.stderr
    assert ("resume with: ./run.sh --stop_stage 9 --asr_inference_module fake_asr_inference --inference_nj 1 "
            "--stage 9") in out.stderr
    log = (recipe / DECODE_DIR / "logdir" / "asr_inference.1.log").read_text()
    assert "fake decoder: cannot decode test_other-01" in log
    assert not any((recipe / DECODE_DIR / dset / ".done").exists() for dset in TEST_SETS)
