"""Tests of the recipe's helper scripts: parse_options.sh, common.sh, cmd.sh, run.pl,
the local/*.sh conventions, asr_config.py, has_module.py, ssamba.sh, split_scp.py,
score_wer.py, data_dir.py and make_results.py."""

import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import RECIPE_ENV, copy_recipe

RECIPE = Path(__file__).resolve().parents[1] / "egs2" / "librispeech_100" / "mamba_mi"
UTILS = RECIPE / "utils"


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    return module


# --------------------------------------------------------------------------
# parse_options.sh


def _options_script(tmp_path: Path) -> Path:
    script = tmp_path / "opts.sh"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/usr/bin/env bash
            set -euo pipefail
            help_message="Usage: opts.sh [options]"
            ## Group one
            stage=1            # first stage
            use_decoder=true   # a boolean option
            test_sets="a b"    # several words
            . {UTILS}/parse_options.sh
            echo "stage=${{stage}} use_decoder=${{use_decoder}} test_sets=${{test_sets}} rest=$*"
            """
        )
    )
    script.chmod(0o755)
    return script


def _run(args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, **kwargs)


def test_parse_options_sets_variables(tmp_path):
    script = _options_script(tmp_path)
    out = _run([str(script), "--stage", "3", "--use-decoder", "false", "--test_sets=x y z", "pos1", "pos2"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "stage=3 use_decoder=false test_sets=x y z rest=pos1 pos2"


def test_parse_options_defaults_and_last_wins(tmp_path):
    script = _options_script(tmp_path)
    out = _run([str(script), "--stage", "2", "--stage", "5"])
    assert out.stdout.strip() == "stage=5 use_decoder=true test_sets=a b rest="


def test_parse_options_rejects_unknown_option(tmp_path):
    out = _run([str(_options_script(tmp_path)), "--no_such_option", "1"])
    assert out.returncode != 0
    assert "invalid option --no_such_option" in out.stderr


def test_parse_options_rejects_non_boolean_for_boolean(tmp_path):
    out = _run([str(_options_script(tmp_path)), "--use_decoder", "yes"])
    assert out.returncode != 0
    assert "true or false" in out.stderr


def test_parse_options_missing_value(tmp_path):
    out = _run([str(_options_script(tmp_path)), "--stage"])
    assert out.returncode != 0
    assert "needs a value" in out.stderr


def test_parse_options_help_lists_every_option_with_value(tmp_path):
    out = _run([str(_options_script(tmp_path)), "--stage", "7", "--help"])
    assert out.returncode == 0
    assert "Usage: opts.sh [options]" in out.stdout
    assert "# Group one" in out.stdout
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.strip().startswith("--")}
    assert set(lines) == {"--stage", "--use_decoder", "--test_sets"}
    assert '"7"' in lines["--stage"] and "first stage" in lines["--stage"]
    assert '"a b"' in lines["--test_sets"]


def test_parse_options_config_file(tmp_path):
    conf = tmp_path / "opts.conf"
    conf.write_text("# comment\n--stage 4\nuse_decoder=false\n")
    out = _run([str(_options_script(tmp_path)), "--config", str(conf), "--stage", "6"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "stage=6 use_decoder=false test_sets=a b rest="


def test_recipe_help_lists_all_options():
    out = _run(["bash", "mamba_mi.sh", "--help"], cwd=RECIPE)
    assert out.returncode == 0, out.stderr
    names = {line.split()[0][2:] for line in out.stdout.splitlines() if line.strip().startswith("--")}
    # every `name=value  # comment` line above parse_options.sh is listed
    script = re.split(r"^recipe_init", (RECIPE / "mamba_mi.sh").read_text(), flags=re.MULTILINE)[0]
    declared = {line.split("=")[0] for line in script.splitlines() if "=" in line and "#" in line and line[:1].isalpha()}
    declared.discard("resume_cmd")
    assert declared and declared <= names
    for expected in ("stage", "stop_stage", "nj", "ngpu", "use_decoder", "corpus", "librispeech_dir",
                     "speed_perturb_factors", "nbpe", "asr_config", "inference_config", "use_lm", "use_ngram",
                     "mini_preset", "mini_seed", "mini_train_speakers"):
        assert expected in names


@pytest.mark.parametrize("name", ["PATH", "HOME", "help_message", "undocumented", "_po_script"])
def test_parse_options_accepts_only_the_scripts_declared_options(tmp_path, name):
    # existing shell variables, and a variable of the script that is no documented option
    script = _options_script(tmp_path)
    script.write_text(script.read_text().replace("stage=1 ", "undocumented=1\nstage=1 "))
    out = _run([str(script), f"--{name}", "/x"])
    assert out.returncode == 1
    assert f"invalid option --{name}: not an option of opts.sh" in out.stderr
    assert out.stdout == ""


# --------------------------------------------------------------------------
# common.sh and cmd.sh


def _shell_recipe(tmp_path: Path, body: str, cmd_sh: str = "") -> Path:
    """A directory laid out like the recipe (utils/, path.sh, cmd.sh) with script.sh."""
    shutil.copytree(UTILS, tmp_path / "utils")
    (tmp_path / "path.sh").write_text("export SOURCED_PATH_SH=yes\n")
    (tmp_path / "cmd.sh").write_text(cmd_sh or (RECIPE / "cmd.sh").read_text())
    script = tmp_path / "script.sh"
    script.write_text("#!/usr/bin/env bash\n. utils/common.sh\n" + textwrap.dedent(body))
    script.chmod(0o755)
    return script


def test_recipe_init_parses_options_and_sources_path_and_cmd(tmp_path):
    script = _shell_recipe(tmp_path, """\
        ## General
        stage=1          # first step
        python=python3   # python
        recipe_init "$@"
        echo "stage=${stage} path_sh=${SOURCED_PATH_SH} train_cmd=${train_cmd} decode_cmd=${decode_cmd}"
        """)
    out = _run(["./script.sh", "--stage", "2"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "stage=2 path_sh=yes train_cmd=utils/run.pl decode_cmd=utils/run.pl"
    assert re.match(r"^\S+ \(script\.sh:6:main\) \./script\.sh --stage 2$", out.stdout.splitlines()[0])
    out = _run(["./script.sh", "--stage", "2", "stray"], cwd=tmp_path)
    assert out.returncode == 1
    assert re.fullmatch(r"\S+ \(script\.sh\) Error: unexpected arguments: stray\n", out.stderr)


@pytest.mark.parametrize("args,message", [
    ((1, 3), None), ((3, 3), None), ((13, 13), None),
    (("abc", 3), "--stage must be an integer from 1 to 13, got 'abc'"),
    ((1, "x"), "--stop_stage must be an integer from 1 to 13, got 'x'"),
    ((0, 3), "--stage must be an integer from 1 to 13, got '0'"),
    ((1, 14), "--stop_stage must be an integer from 1 to 13, got '14'"),
    ((-1, 3), "--stage must be an integer from 1 to 13, got '-1'"),
    ((5, 3), "--stage 5 comes after --stop_stage 3"),
])
def test_require_stages(tmp_path, args, message):
    script = _shell_recipe(tmp_path, 'stage=$1 stop_stage=$2\nrequire_stages 13\necho ok\n')
    out = _run(["./script.sh", *map(str, args)], cwd=tmp_path)
    if message is None:
        assert out.returncode == 0 and out.stdout == "ok\n" and out.stderr == ""
    else:
        assert out.returncode == 1 and out.stdout == ""
        assert out.stderr.endswith(f"(script.sh) Error: {message}\n") or f"Error: {message}" in out.stderr


def test_require_files_names_the_first_missing_file(tmp_path):
    (tmp_path / "present").write_text("")
    script = _shell_recipe(tmp_path, 'require_files "run stage 2 first" present absent also_absent\necho unreachable\n')
    out = _run(["./script.sh"], cwd=tmp_path)
    assert out.returncode == 1 and "unreachable" not in out.stdout
    assert out.stderr.strip().endswith("Error: absent is missing: run stage 2 first")


FAKE_TRAINER = """\
import argparse, os, sys
parser = argparse.ArgumentParser()
parser.add_argument("--output_dir")
parser.add_argument("--checkpoint")
parser.add_argument("--fail", default="no")
args, _ = parser.parse_known_args()
print("argv:", " ".join(sys.argv[1:]))
print("OMP_NUM_THREADS =", os.environ["OMP_NUM_THREADS"])
if args.fail == "yes":
    sys.exit("fake trainer: diverged")
if args.checkpoint:
    open(os.path.join(args.output_dir, args.checkpoint), "w").write("weights")
"""


def test_train_espnet_marks_done_skips_and_refuses_other_options(tmp_path):
    script = _shell_recipe(tmp_path, """\
        python=python3 ngpu=$1 train_threads=3
        . ./cmd.sh
        exp=exp/$2 sig=$3
        if ! is_trained "${exp}" "${sig}" model.pth; then
            start_training "${exp}" "${sig}"
            train_espnet "${exp}" "${sig}" model.pth fake_trainer --output_dir "${exp}" --config "a b.yaml" "${@:4}"
        fi
        echo finished
        """)
    (tmp_path / "fake_trainer.py").write_text(FAKE_TRAINER)
    out = _run(["./script.sh", "0", "one", "sig1", "--checkpoint", "model.pth"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    exp = tmp_path / "exp" / "one"
    assert (exp / ".done").read_text() == "sig1\n" and (exp / "model.pth").exists()
    log = (exp / "train.log").read_text()
    assert "argv: --ngpu 0 --output_dir exp/one --config a b.yaml --checkpoint model.pth" in log
    assert "OMP_NUM_THREADS = 3" in log
    again = _run(["./script.sh", "0", "one", "sig1"], cwd=tmp_path)
    assert "exp/one: trained (.done); skipping" in again.stdout and "Training" not in again.stdout
    other = _run(["./script.sh", "0", "one", "sig2"], cwd=tmp_path)
    assert other.returncode == 1
    assert "exp/one holds a training started with other options or data (sig1)" in other.stderr
    # DDP with several GPUs; a failed training and one without its checkpoint are errors
    _run(["./script.sh", "2", "ddp", "s", "--checkpoint", "model.pth"], cwd=tmp_path)
    assert "--ngpu 2 --multiprocessing_distributed true --output_dir" in (tmp_path / "exp/ddp/train.log").read_text()
    failed = _run(["./script.sh", "0", "failed", "s", "--fail", "yes"], cwd=tmp_path)
    assert failed.returncode == 1 and "training failed; see exp/failed/train.log" in failed.stderr
    assert "fake trainer: diverged" in (tmp_path / "exp/failed/train.log").read_text()
    assert not (tmp_path / "exp/failed/.done").exists()
    empty = _run(["./script.sh", "0", "empty", "s"], cwd=tmp_path)
    assert empty.returncode == 1 and "training finished without exp/empty/model.pth" in empty.stderr


def test_for_each_runs_items_in_turn_or_at_most_n_at_once(tmp_path):
    # every item records how many items run at that moment (files in a directory = counter)
    counter = tmp_path / "running"
    counter.mkdir()
    _shell_recipe(tmp_path, f"""\
        item() {{
            touch {counter}/$1
            if [ "$1" = bad ]; then sleep 0.1; else sleep 0.5; fi
            ls {counter} | wc -l >{tmp_path}/seen.$1
            rm {counter}/$1
            [ "$1" != bad ] || die "item $1 failed"
            echo "done $1"
        }}
        for_each "$1" item "${{@:2}}"
        echo "all done"
        """)
    out = _run(["./script.sh", "1", "a", "b", "c"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["done a", "done b", "done c", "all done"]
    assert all((tmp_path / f"seen.{i}").read_text().strip() == "1" for i in "abc")
    out = _run(["./script.sh", "2", "d", "e", "f", "g", "h"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == ["all done", "done d", "done e", "done f", "done g", "done h"]
    assert max(int((tmp_path / f"seen.{i}").read_text()) for i in "defgh") == 2
    # a failure: the running item finishes, no further one starts, the script stops
    out = _run(["./script.sh", "2", "bad", "x", "y", "z"], cwd=tmp_path)
    assert out.returncode == 1 and "Error: item bad failed" in out.stderr
    assert out.stdout.splitlines() == ["done x"]


def test_experiment_name_helpers(tmp_path):
    script = _shell_recipe(tmp_path, """\
        expdir=exp hubert_label_layer="6 9" baseline_label_layer=6
        echo "$(layers_of mamba_hubert)|$(layers_of hubert)|$(it2_tag hubert 6)|$(ssl_it2_exp mamba_hubert 9)"
        """)
    out = _run(["./script.sh"], cwd=tmp_path)
    assert out.stdout == "6 9|6|hubert_it2_L6|exp/ssl_mamba_hubert_it2_L9\n"


def test_experiment_names_of_a_variant(tmp_path):
    script = _shell_recipe(tmp_path, """\
        expdir=exp ssl_tag=nopos
        echo "$(ssl_name hubert)|$(it2_tag mamba_hubert 6)|$(ssl_it1_exp mamba_hubert)|$(ssl_it2_exp hubert 6)"
        """)
    out = _run(["./script.sh"], cwd=tmp_path)
    assert out.stdout == "hubert_nopos|mamba_hubert_nopos_it2_L6|exp/ssl_mamba_hubert_nopos_it1|exp/ssl_hubert_nopos_it2_L6\n"


def test_ssl_tag_picks_the_models_with_a_config_of_the_variant(tmp_path):
    recipe = copy_recipe(tmp_path)
    # the paper's conf/ssl: conf/ssl/tuning has the nopos variant of Mamba-HuBERT only
    out = _run(["local/ssl.sh", "--ssl_tag", "nopos"], cwd=recipe, env=RECIPE_ENV)
    assert out.returncode == 1
    assert "no nopos variant of hubert" in out.stdout and "variant of mamba_hubert" not in out.stdout
    assert "wav.scp is missing" in out.stderr  # got past the configs: mamba_hubert's were found
    out = _run(["local/ssl.sh", "--ssl_tag", "nopos", "--conf_dir", "conf/ssl/tiny"], cwd=recipe, env=RECIPE_ENV)
    assert out.returncode == 1 and "no model has a config of variant 'nopos' in conf/ssl/tiny" in out.stderr
    out = _run(["local/downstream.sh", "--ssl_tag", "nopos", "--stage", "5", "--models", "hubert"], cwd=recipe,
               env=RECIPE_ENV)
    assert out.returncode == 1 and "stage 11 pretrained no nopos variant of hubert; skipped" in out.stdout
    assert "no pretrained model to use (--models 'hubert', --ssl_tag 'nopos')" in out.stderr
    for script in ("local/ssl.sh", "local/downstream.sh"):
        out = _run([script, "--ssl_tag", "no-pos"], cwd=recipe, env=RECIPE_ENV)
        assert out.returncode == 1 and "--ssl_tag must be letters and digits, got 'no-pos'" in out.stderr


@pytest.mark.parametrize("settings,train_cmd,decode_cmd", [
    ("", "utils/run.pl", "utils/run.pl"),
    ("cmd_backend=slurm", "utils/slurm.pl", "utils/slurm.pl"),
    ("cmd_backend=slurm slurm_partition=cpu slurm_gpu_partition=gpu slurm_train_mem=32G slurm_decode_mem=4G "
     "slurm_time=2:00:00 slurm_account=lab",
     "utils/slurm.pl --partition cpu --gpu_partition gpu --account lab --time 2:00:00 --mem 32G",
     "utils/slurm.pl --partition cpu --gpu_partition gpu --account lab --time 2:00:00 --mem 4G"),
])
def test_cmd_sh_backends(tmp_path, settings, train_cmd, decode_cmd):
    cmd_sh = (RECIPE / "cmd.sh").read_text()
    for setting in settings.split():
        name = setting.split("=")[0]
        cmd_sh, n = re.subn(rf"^{name}=\S*", setting, cmd_sh, flags=re.MULTILINE)
        assert n == 1, name
    _shell_recipe(tmp_path, ". ./cmd.sh\necho \"${train_cmd}|${decode_cmd}\"\n", cmd_sh)
    out = _run(["./script.sh"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{train_cmd}|{decode_cmd}\n"


def test_cmd_sh_rejects_unknown_backend(tmp_path):
    cmd_sh = (RECIPE / "cmd.sh").read_text().replace("cmd_backend=local", "cmd_backend=sge")
    _shell_recipe(tmp_path, ". ./cmd.sh\necho unreachable\n", cmd_sh)
    out = _run(["./script.sh"], cwd=tmp_path)
    assert out.returncode == 1 and "cmd_backend must be local or slurm, got 'sge'" in out.stderr


# --------------------------------------------------------------------------
# The conventions of the recipe's scripts


LOCAL_SCRIPTS = sorted(p.name for p in (RECIPE / "local").glob("*.sh"))


@pytest.mark.parametrize("script", LOCAL_SCRIPTS)
def test_every_local_script_takes_python_and_ngpu(tmp_path, script):
    recipe = copy_recipe(tmp_path)
    out = _run(["bash", f"local/{script}", "--python", "python3", "--ngpu", "0", "--no_such_option", "1"],
               cwd=recipe, env=RECIPE_ENV)
    assert out.returncode == 1
    assert f"({script}) Error: invalid option --no_such_option" in out.stderr


@pytest.mark.parametrize("script", ["mamba_mi.sh", *(f"local/{s}" for s in LOCAL_SCRIPTS)])
def test_scripts_follow_the_shell_convention(script):
    text = (RECIPE / script).read_text()
    assert ". utils/common.sh" in text and re.search(r"^recipe_init \"\$@\"$", text, re.MULTILINE)
    assert not re.search(r"^set -", text, re.MULTILINE)  # common.sh sets -Eeuo pipefail
    code = "\n".join(line.split(" # ")[0] for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"\bpython3? (-c|-m|\S+\.py)", code)  # Python runs as ${python}
    assert not re.search(r'log "Error|echo .*>&2', code)  # errors go through die/error
    assert "layers_of()" not in code and "_it2_L$" not in code  # the helpers of common.sh


# --------------------------------------------------------------------------
# local/asr_config.py, local/has_module.py


@pytest.mark.parametrize("config,query,expected", [
    ({"best_model_criterion": [["valid", "cer_ctc", "min"]]}, "checkpoint", "valid.cer_ctc.ave.pth"),
    ({"best_model_criterion": [["train", "loss", "min"], ["valid", "acc", "max"]]}, "checkpoint",
     "train.loss.ave.pth"),
    ({"encoder": "conbimamba"}, "checkpoint", "valid.loss.ave.pth"),
    ({"frontend": "default", "frontend_conf": {"n_fft": 512, "hop_length": 160}}, "frontend",
     "default {'n_fft': 512, 'hop_length': 160}"),
    ({}, "frontend", "None None"),
    ({"decoder": "transformer", "model_conf": {"ctc_weight": 0.3}}, "has_decoder", "true"),
    ({"decoder": "transformer", "model_conf": {"ctc_weight": 1.0}}, "has_decoder", "false"),
    ({"decoder": None}, "has_decoder", "false"),
])
def test_asr_config_queries(tmp_path, config, query, expected):
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    out = _run([sys.executable, str(RECIPE / "local" / "asr_config.py"), query, str(path)])
    assert out.returncode == 0, out.stderr
    assert out.stdout == expected + "\n"


def test_asr_config_bad_config(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("- a list\n")
    out = _run([sys.executable, str(RECIPE / "local" / "asr_config.py"), "checkpoint", str(path)])
    assert out.returncode == 1 and f"{path}: not a YAML mapping" in out.stderr
    out = _run([sys.executable, str(RECIPE / "local" / "asr_config.py"), "checkpoint", str(tmp_path / "none.yaml")])
    assert out.returncode == 1 and "none.yaml" in out.stderr


@pytest.mark.parametrize("module,found", [("json", True), ("json.decoder", True), ("no_such_module_xyz", False),
                                          ("no_such_package_xyz.sub", False), ("json.no_such_sub", False)])
def test_has_module(module, found):
    out = _run([sys.executable, str(RECIPE / "local" / "has_module.py"), module])
    assert out.returncode == (0 if found else 1), out.stderr
    assert out.stderr == ""


# --------------------------------------------------------------------------
# local/ssamba.sh (a fake pretraining module: the real one is tested in test_ssamba_train.py)


FAKE_SSAMBA = """\
import argparse, os, sys
parser = argparse.ArgumentParser()
for name in ("--config", "--wav_scp", "--output_dir", "--device", "--resume", "--max_steps"):
    parser.add_argument(name)
args = parser.parse_args()
with open("calls.txt", "a") as f:
    f.write(f"device={args.device} max_steps={args.max_steps}\\n")
open(os.path.join(args.output_dir, "model.pth"), "w").write("weights")
"""


def test_ssamba_sh_ngpu_and_done_signature(tmp_path):
    recipe = copy_recipe(tmp_path)
    (recipe / "dump/raw/train_clean_100").mkdir(parents=True)
    (recipe / "dump/raw/train_clean_100/wav.scp").write_text("u1 /audio/u1.flac\n")
    (recipe / "fake_ssamba.py").write_text(FAKE_SSAMBA)
    cmd = ["bash", "local/ssamba.sh", "--ssamba_train_module", "fake_ssamba", "--ssamba_config", "conf/ssamba/mini.yaml"]
    out = _run([*cmd, "--ngpu", "0"], cwd=recipe, env=RECIPE_ENV)
    assert out.returncode == 0, out.stdout + out.stderr
    exp = recipe / "exp" / "ssamba_mini"
    assert (exp / ".done").read_text().startswith("config=") and (exp / "model.pth").exists()
    again = _run([*cmd, "--ngpu", "0"], cwd=recipe, env=RECIPE_ENV)
    assert "exp/ssamba_mini: trained (.done); skipping" in again.stdout
    assert (recipe / "calls.txt").read_text() == "device=cpu max_steps=None\n"
    # another --max_steps is another signature; a GPU run uses cuda (one GPU)
    out = _run([*cmd, "--ngpu", "2", "--max_steps", "5"], cwd=recipe, env=RECIPE_ENV)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (recipe / "calls.txt").read_text().splitlines()[-1] == "device=cuda max_steps=5"
    assert "--device cuda" in (exp / "log" / "ssamba_train.log").read_text()
    out = _run([*cmd, "--ngpu", "many"], cwd=recipe, env=RECIPE_ENV)
    assert out.returncode == 1 and "--ngpu must be a non-negative integer, got 'many'" in out.stderr
    out = _run([*cmd, "--train_set", "nothing"], cwd=recipe, env=RECIPE_ENV)
    assert out.returncode == 1 and "dump/raw/nothing/wav.scp is missing: run the data stages first" in out.stderr


# --------------------------------------------------------------------------
# run.pl


def test_run_pl_substitutes_job_and_logs(tmp_path):
    out = _run([str(UTILS / "run.pl"), "JOB=1:3", str(tmp_path / "log.JOB.txt"),
                "echo", "job", "JOB", "two  spaces", "|", "tr", "a-z", "A-Z"])
    assert out.returncode == 0, out.stderr
    for i in (1, 2, 3):
        log = (tmp_path / f"log.{i}.txt").read_text()
        assert f"JOB {i} TWO  SPACES" in log
        assert "# Ended (code 0)" in log


def test_run_pl_single_job(tmp_path):
    out = _run([str(UTILS / "run.pl"), str(tmp_path / "sub" / "one.log"), "echo", "hello"])
    assert out.returncode == 0
    assert "hello" in (tmp_path / "sub" / "one.log").read_text()


def test_run_pl_fails_when_any_job_fails(tmp_path):
    out = _run([str(UTILS / "run.pl"), "JOB=1:4", str(tmp_path / "log.JOB"), "test", "JOB", "-ne", "3"])
    assert out.returncode == 1
    assert "1 / 4 failed" in out.stderr and "log.3" in out.stderr
    assert "# Ended (code 1)" in (tmp_path / "log.3").read_text()
    assert "# Ended (code 0)" in (tmp_path / "log.2").read_text()


def test_run_pl_runs_in_parallel_and_respects_max_jobs(tmp_path):
    # every job records how many jobs run at that moment (lock directory = counter)
    counter = tmp_path / "running"
    counter.mkdir()
    job = f"touch {counter}/JOB; sleep 0.6; ls {counter} | wc -l > {tmp_path}/seen.JOB; rm {counter}/JOB"
    start = time.time()
    out = _run([str(UTILS / "run.pl"), "JOB=1:4", str(tmp_path / "p.JOB.log"), "bash", "-c", job])
    parallel_time = time.time() - start
    assert out.returncode == 0, out.stderr
    assert max(int((tmp_path / f"seen.{i}").read_text()) for i in range(1, 5)) >= 2
    assert parallel_time < 4 * 0.6
    out = _run([str(UTILS / "run.pl"), "--max_jobs_run", "1", "JOB=1:3", str(tmp_path / "s.JOB.log"), "bash", "-c", job])
    assert out.returncode == 0, out.stderr
    assert all(int((tmp_path / f"seen.{i}").read_text()) == 1 for i in range(1, 4))


def test_run_pl_passes_each_argument_as_one_word(tmp_path):
    # nothing in an argument reaches the shell: no command, no expansion, no syntax error
    out = _run([str(UTILS / "run.pl"), "log", "echo", "x;touch${IFS}f", "dir(1)", "$HOME", "*", "a  b", ""],
               cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "f").exists()
    assert "x;touch${IFS}f dir(1) $HOME * a  b \n" in (tmp_path / "log").read_text()


def test_run_pl_operator_words_act_as_shell(tmp_path):
    out = _run([str(UTILS / "run.pl"), "JOB=1:2", "log.JOB", "echo", "part", "JOB", ">", "out.JOB", "&&",
                "sh", "-c", "echo oops >&2", "2>&1", "|", "tr", "a-z", "A-Z", ";", "echo", "done", ">>", "out.JOB"],
               cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for i in (1, 2):
        assert (tmp_path / f"out.{i}").read_text() == f"part {i}\ndone\n"
        assert "OOPS" in (tmp_path / f"log.{i}").read_text()


def test_run_pl_rejects_bad_range(tmp_path):
    out = _run([str(UTILS / "run.pl"), "JOB=3:1", str(tmp_path / "x.JOB"), "true"])
    assert out.returncode == 1 and "bad job range" in out.stderr


# --------------------------------------------------------------------------
# split_scp.py


@pytest.mark.parametrize("n_lines,n_parts", [(10, 3), (7, 7), (5, 1), (100, 8)])
def test_split_scp_parts_concatenate_to_input(tmp_path, n_lines, n_parts):
    lines = [f"utt{i:03d} value {i}\n" for i in range(n_lines)]
    src = tmp_path / "in.scp"
    src.write_text("".join(lines))
    out = _run([sys.executable, str(UTILS / "split_scp.py"), "--num_parts", str(n_parts), str(src),
                str(tmp_path / "part.JOB.scp")])
    assert out.returncode == 0, out.stderr
    parts = [(tmp_path / f"part.{i}.scp").read_text().splitlines(keepends=True) for i in range(1, n_parts + 1)]
    assert sum(parts, []) == lines
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_split_scp_too_many_parts(tmp_path):
    src = tmp_path / "in.scp"
    src.write_text("a 1\nb 2\n")
    out = _run([sys.executable, str(UTILS / "split_scp.py"), str(src), *(str(tmp_path / f"o{i}") for i in range(3))])
    assert out.returncode == 1 and "cannot split 2 lines into 3" in out.stderr


# --------------------------------------------------------------------------
# score_wer.py


def _levenshtein(ref, hyp):
    """Plain dynamic programme: (edits, substitutions, deletions, insertions) of one optimal path."""
    n, m = len(ref), len(hyp)
    dist = [[(0, 0, 0, 0)] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        dist[i][0] = (i, 0, i, 0)
    for j in range(1, m + 1):
        dist[0][j] = (j, 0, 0, j)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            e, s, d, k = dist[i - 1][j - 1]
            if ref[i - 1] == hyp[j - 1]:
                best = (e, s, d, k)
            else:
                best = (e + 1, s + 1, d, k)
            e, s, d, k = dist[i - 1][j]
            best = min(best, (e + 1, s, d + 1, k), key=lambda t: t[0])
            e, s, d, k = dist[i][j - 1]
            best = min(best, (e + 1, s, d, k + 1), key=lambda t: t[0])
            dist[i][j] = best
    return dist[n][m]


def test_score_normalize():
    score_wer = _load(UTILS / "score_wer.py")
    assert score_wer.normalize("  Hello, world!  it's  'quoted' ") == "HELLO WORLD IT'S QUOTED"
    assert score_wer.normalize("") == ""


def test_score_matches_independent_edit_distance():
    import random

    score_wer = _load(UTILS / "score_wer.py")
    rng = random.Random(0)
    vocab = "A B C D E F G".split()
    ref, hyp = {}, {}
    for i in range(60):
        r = [rng.choice(vocab) for _ in range(rng.randint(1, 9))]
        h = list(r)
        for _ in range(rng.randint(0, 4)):
            op = rng.choice("sdi")
            if op == "s" and h:
                h[rng.randrange(len(h))] = rng.choice(vocab)
            elif op == "d" and h:
                del h[rng.randrange(len(h))]
            else:
                h.insert(rng.randrange(len(h) + 1), rng.choice(vocab))
        ref[f"u{i}"] = " ".join(r)
        if h or i % 2:  # some empty hypotheses are missing altogether
            hyp[f"u{i}"] = " ".join(h).lower()
    result = score_wer.score(ref, hyp)
    edits = sum(_levenshtein(ref[u].split(), hyp.get(u, "").upper().split())[0] for u in ref)
    words = sum(len(r.split()) for r in ref.values())
    assert result["wrd"] == words and result["snt"] == 60
    assert result["sub"] + result["del"] + result["ins"] == edits
    assert math.isclose(result["Err"], 100.0 * edits / words)
    assert result["corr"] + result["sub"] + result["del"] == words


def test_score_cli_writes_table(tmp_path):
    (tmp_path / "ref").write_text("u1 THE CAT SAT\nu2 A DOG\n")
    (tmp_path / "hyp").write_text("u1 the cat sat down\nu2 a\n")
    out = _run([sys.executable, str(UTILS / "score_wer.py"), str(tmp_path / "ref"), str(tmp_path / "hyp"),
                str(tmp_path / "score")])
    assert out.returncode == 0, out.stderr
    table = (tmp_path / "score" / "result.txt").read_text()
    assert "| Snt | Wrd | Corr | Sub | Del | Ins | Err | S.Err |" in table
    assert "| 2 | 5 | 80.0 | 0.0 | 20.0 | 20.0 | 40.0 | 100.0 |" in table
    summary = json.loads((tmp_path / "score" / "result.json").read_text())
    assert summary["ins"] == 1 and summary["del"] == 1


def _sentences(rng, n, vocab="A B C D E F G H I J K L".split()):
    """n references of 2-14 random words."""
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(2, 14))) for _ in range(n)]


def test_chance_level_needs_enough_utterances_to_be_significant():
    score_wer = _load(UTILS / "score_wer.py")
    n = score_wer.CHANCE_MIN_UTTS
    assert 0.5 ** n < score_wer.CHANCE_ALPHA <= 0.5 ** (n - 1)  # all wins of n are significant, of n - 1 not
    refs = [" ".join(f"W{i}{k}" for k in range(i % 3 + 1)) for i in range(n)]  # no word shared
    hyps = [r + " X" for r in refs]  # one error each; another utterance's hypothesis has at least two
    errors = [1] * n
    chance = score_wer.chance_level(refs, hyps, errors)
    assert (chance["chance_wins"], chance["chance_losses"]) == (n, 0)
    assert chance["chance_p"] == 0.5 ** n and chance["above_chance"]
    too_few = score_wer.chance_level(refs[:-1], hyps[:-1], errors[:-1])
    assert too_few["above_chance"] is None and too_few["chance_p"] is None


def test_chance_level_of_two_utterances_is_the_swap(monkeypatch):
    score_wer = _load(UTILS / "score_wer.py")
    monkeypatch.setattr(score_wer, "CHANCE_MIN_UTTS", 2)
    refs, hyps = ["A B C", "D E"], ["A B", "D E F G"]
    errors = [_levenshtein(r.split(), h.split())[0] for r, h in zip(refs, hyps)]
    chance = score_wer.chance_level(refs, hyps, errors)
    swapped = _levenshtein(refs[0].split(), hyps[1].split())[0] + _levenshtein(refs[1].split(), hyps[0].split())[0]
    assert math.isclose(chance["chance_Err"], 100.0 * swapped / 5)
    assert (chance["chance_wins"], chance["chance_losses"]) == (2, 0) and chance["chance_p"] == 0.25


def test_chance_level_tells_listening_from_blind_output():
    import random

    from scipy.stats import binomtest

    score_wer = _load(UTILS / "score_wer.py")
    rng = random.Random(0)
    refs = _sentences(rng, 120)

    def check(hyps):
        errors = [_levenshtein(r.split(), h.split())[0] for r, h in zip(refs, hyps)]
        chance = score_wer.chance_level(refs, hyps, errors)
        wins, losses = chance["chance_wins"], chance["chance_losses"]
        if wins + losses:
            assert math.isclose(chance["chance_p"], binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue)
        return chance

    # one word in three wrong: each reference is matched far better by its own hypothesis
    noisy = [" ".join(w if rng.random() > 1 / 3 else "X" for w in r.split()) for r in refs]
    listening = check(noisy)
    assert listening["above_chance"] and listening["chance_p"] < 1e-20 and listening["chance_Err"] > 80
    # the same words whatever the audio, or its length only (one word per reference word)
    assert not check(["A B A B"] * len(refs))["above_chance"]
    assert not check([" ".join(["A"] * len(r.split())) for r in refs])["above_chance"]
    # exact hypotheses: no utterance is ever scored against its own one (a derangement)
    exact = check(list(refs))
    assert exact["chance_wins"] == len(refs) and exact["chance_losses"] == 0


def test_score_cli_writes_the_chance_level(tmp_path):
    import random

    rng = random.Random(1)
    refs = _sentences(rng, 30)
    (tmp_path / "ref").write_text("".join(f"u{i} {r}\n" for i, r in enumerate(refs)))
    (tmp_path / "hyp").write_text("".join(f"u{i} A B A B\n" for i in range(len(refs))))
    out = _run([sys.executable, str(UTILS / "score_wer.py"), str(tmp_path / "ref"), str(tmp_path / "hyp"),
                str(tmp_path / "score")])
    assert out.returncode == 0, out.stderr
    assert "NOT above chance" in (tmp_path / "score" / "result.txt").read_text()
    summary = json.loads((tmp_path / "score" / "result.json").read_text())
    assert summary["above_chance"] is False and summary["chance_p"] >= 0.01


def test_score_rejects_hypothesis_without_reference(tmp_path):
    (tmp_path / "ref").write_text("u1 A\n")
    (tmp_path / "hyp").write_text("u1 A\nu9 B\n")
    out = _run([sys.executable, str(UTILS / "score_wer.py"), str(tmp_path / "ref"), str(tmp_path / "hyp"),
                str(tmp_path / "score")])
    assert out.returncode == 1 and "without a reference" in out.stderr


# --------------------------------------------------------------------------
# data_dir.py


def _make_dir(path: Path, utts, spk="s1"):
    path.mkdir(parents=True)
    (path / "wav.scp").write_text("".join(f"{u} /audio/{u}.flac\n" for u in utts))
    (path / "text").write_text("".join(f"{u} WORDS OF {u.upper()}\n" for u in utts))
    (path / "utt2spk").write_text("".join(f"{u} {spk}\n" for u in utts))


def test_data_dir_combine_subset_and_spk2utt(tmp_path):
    data_dir = _load(UTILS / "data_dir.py")
    _make_dir(tmp_path / "a", ["u1", "u3"], "sa")
    _make_dir(tmp_path / "b", ["u2"], "sb")
    combined = data_dir.combine([data_dir.DataDir.load(tmp_path / "a"), data_dir.DataDir.load(tmp_path / "b")])
    combined.save(tmp_path / "c")
    assert (tmp_path / "c" / "wav.scp").read_text().splitlines()[1] == "u2 /audio/u2.flac"
    assert (tmp_path / "c" / "spk2utt").read_text() == "sa u1 u3\nsb u2\n"
    data_dir.subset(combined, ["u3"]).save(tmp_path / "d")
    assert (tmp_path / "d" / "text").read_text() == "u3 WORDS OF U3\n"
    with pytest.raises(ValueError, match="more than one input"):
        data_dir.combine([data_dir.DataDir.load(tmp_path / "a"), data_dir.DataDir.load(tmp_path / "a")])


def test_data_dir_speed_perturb_entries(tmp_path):
    data_dir = _load(UTILS / "data_dir.py")
    _make_dir(tmp_path / "a", ["u1"], "sa")
    sp = data_dir.speed_perturb(data_dir.DataDir.load(tmp_path / "a"), 0.9)
    assert sp.files["wav.scp"] == {"sp0.9-u1": "sox -D /audio/u1.flac -t wav -r 16000 -b 16 - speed 0.9 |"}
    assert sp.files["utt2spk"] == {"sp0.9-u1": "sp0.9-sa"}
    assert sp.files["text"]["sp0.9-u1"] == "WORDS OF U1"
    with pytest.raises(ValueError, match="factor"):
        data_dir.speed_perturb(sp, 0.0)


def test_read_kv_reports_file_and_line(tmp_path):
    data_dir = _load(UTILS / "data_dir.py")
    (tmp_path / "f").write_text("a 1\na 2\n")
    with pytest.raises(ValueError, match=r"f:2: duplicate key 'a'"):
        data_dir.read_kv(tmp_path / "f")


# --------------------------------------------------------------------------
# make_results.py


def test_make_results_table_one(tmp_path):
    make_results = _load(RECIPE / "local" / "make_results.py")
    for name, config, wers in (
        ("asr_dec", {"decoder": "transformer", "model_conf": {"ctc_weight": 0.3}}, (5.9, 17.1, 6.0, 17.2)),
        ("asr_nodec", {"decoder": None, "model_conf": {"ctc_weight": 1.0}}, (8.4, 24.3, 8.8, 25.1)),
    ):
        exp = tmp_path / name
        exp.mkdir()
        (exp / "config.yaml").write_text(json.dumps({"encoder": "conbimamba", **config}))
        for dset, wer in zip(("dev_clean", "dev_other", "test_clean", "test_other"), wers):
            score = exp / "decode_x" / dset / "score_wer"
            score.mkdir(parents=True)
            row = {"snt": 1, "wrd": 10, "corr": 9, "sub": 1, "del": 0, "ins": 0, "snt_err": 1,
                   "Corr": 90.0, "Sub": 10.0, "Del": 0.0, "Ins": 0.0, "Err": wer, "S.Err": 100.0}
            (score / "result.json").write_text(json.dumps(row))
    out = tmp_path / "RESULTS.md"
    assert make_results.main(["--exp_dir", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| + Decoder | 5.9 | 17.1 | 6.0 | 17.2 | asr_dec | decode_x | ? |" in text
    assert "| - Decoder | 8.4 | 24.3 | 8.8 | 25.1 | asr_nodec | decode_x | ? |" in text
    assert text.index("+ Decoder |") < text.index("- Decoder |")
    assert "- torch:" in text and "- git commit:" in text
    assert "What the mini corpus can show" not in text  # no data/.done here


def test_make_results_marks_chance_level_and_the_mini_corpus(tmp_path, monkeypatch):
    make_results = _load(RECIPE / "local" / "make_results.py")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / ".done").write_text("corpus=mini seed=1 sizes=48x50,6x20,lm20000 dir=\n")
    exp = tmp_path / "exp" / "asr_nodec"
    exp.mkdir(parents=True)
    (exp / "config.yaml").write_text(json.dumps({"encoder": "conbimamba", "model_conf": {"ctc_weight": 1.0}}))
    for dset, above in (("dev_clean", True), ("dev_other", False), ("test_clean", True), ("test_other", False)):
        score = exp / "decode_x" / dset / "score_wer"
        score.mkdir(parents=True)
        row = {"snt": 40, "wrd": 300, "corr": 9, "sub": 1, "del": 0, "ins": 0, "snt_err": 1, "Corr": 90.0,
               "Sub": 10.0, "Del": 0.0, "Ins": 0.0, "Err": 40.0, "S.Err": 100.0, "chance_Err": 101.5,
               "chance_wins": 30, "chance_losses": 2, "chance_p": 0.003 if above else 0.4, "above_chance": above}
        (score / "result.json").write_text(json.dumps(row))
    assert make_results.main(["--exp_dir", "exp", "--out", "RESULTS.md"]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| - Decoder | 40.0 | 40.0 | 40.0 | 40.0 | asr_nodec | decode_x | dev_other, test_other |" in text
    assert "| dev_other | 40 | 300 | 90.0 | 10.0 | 0.0 | 0.0 | 40.0 | 100.0 | 101.5 | p = 0.4 |" in text
    assert "## What the mini corpus can show" in text and "No better than chance:" in text
