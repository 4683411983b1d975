"""utils/slurm.pl against a real single-node Slurm cluster, started by the fixture.

The fixture runs as root: it writes a slurm.conf for this host (its cores and memory
as `slurmd -C` reports them, two GPUs made of empty files so that --gres=gpu:N can be
granted) into a temporary directory, starts munged, slurmctld and slurmd on loopback
ports, and stops them at the end. Without Debian's slurmctld, slurmd, slurm-client and
munge, without root, or when the daemons do not come up, the tests skip with the
reason. The job arrays and the recipe's decoding stage (with the fake decoder of
test_recipe_reliability.py) give the same outputs through slurm.pl as through run.pl.
"""

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import RECIPE, RECIPE_ENV, copy_recipe
from test_recipe_reliability import TEST_SETS, decode_args, make_decodable, read_hypotheses, run_recipe

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "squeue")
UTILS = RECIPE / "utils"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_conf(root: Path, host: str) -> str:
    node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    node = re.sub(r"^NodeName=\S+", f"NodeName={host}", node)
    # Scheduling at once, and MinJobAge 4 s: sbatch --wait then polls every 2 s (with the
    # default 300 s it backs off to 8 and 32 s).
    return "\n".join([
        "ClusterName=mamba_mi_test",
        f"SlurmctldHost={host}(127.0.0.1)",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={root}/munge/munge.socket",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/log/slurmctld.log",
        f"SlurmdLogFile={root}/log/slurmd.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "MpiDefault=none",
        "SchedulerType=sched/builtin",
        "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0",
        "ReturnToService=2",
        "MinJobAge=4",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "GresTypes=gpu",
        f"{node} NodeAddr=127.0.0.1 Gres=gpu:2 State=UNKNOWN",
        f"PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def _stop(procs) -> None:
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
    for proc in reversed(procs):
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    """The environment of a client of the test cluster (SLURM_CONF)."""
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        pytest.skip(f"needs Slurm and munge ({', '.join(missing)} not found; Debian: apt-get install "
                    "slurmctld slurmd slurm-client munge)")
    if os.geteuid() != 0:
        pytest.skip("needs root to start slurmctld and slurmd")
    root = tmp_path_factory.mktemp("slurm")
    for name in ("munge", "state", "spool", "log"):
        (root / name).mkdir()
    (root / "munge").chmod(0o755)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    host = socket.gethostname().split(".")[0]
    for i in (0, 1):
        (root / f"gpu{i}").touch()
    (root / "slurm.conf").write_text(_slurm_conf(root, host))
    (root / "gres.conf").write_text(f"NodeName={host} Name=gpu File={root}/gpu[0-1]\n")
    env = dict(RECIPE_ENV, SLURM_CONF=str(root / "slurm.conf"))
    procs = []
    try:
        procs.append(subprocess.Popen(
            ["munged", "-F", "--force", f"--socket={root}/munge/munge.socket", f"--key-file={key}",
             f"--pid-file={root}/munge/munged.pid", f"--seed-file={root}/munge/munged.seed",
             f"--log-file={root}/log/munged.log"],
            stdout=subprocess.DEVNULL, stderr=open(root / "log" / "munged.err", "w")))
        for daemon in ("slurmctld", "slurmd"):
            procs.append(subprocess.Popen([daemon, "-D", "-f", str(root / "slurm.conf")], env=env,
                                          stdout=subprocess.DEVNULL, stderr=open(root / "log" / f"{daemon}.err", "w")))
            time.sleep(0.5)
        deadline = time.time() + 30
        state = ""
        while time.time() < deadline and state != "idle":
            time.sleep(0.3)
            if any(p.poll() is not None for p in procs):
                break
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout.strip()
        if state != "idle":
            logs = "".join(p.read_text()[-600:] for p in sorted((root / "log").iterdir()))
            pytest.skip(f"the test cluster did not come up (node state '{state}'): {logs}")
        yield env
    finally:
        _stop(procs)


def _strip_times(log: str) -> str:
    return "\n".join(line for line in log.splitlines() if not re.match(r"# (Started|Accounting|Ended)", line))


def test_job_array_matches_run_pl(slurm_env, tmp_path):
    command = ["JOB=1:3", "log.JOB.txt", "echo", "part JOB", "a;b", "$HOME", "|", "tr", "a-z", "A-Z", "&&",
               "test", "JOB", "-ne", "2"]
    results = {}
    for runner in ("run.pl", "slurm.pl"):
        work = tmp_path / runner
        work.mkdir()
        out = subprocess.run([str(UTILS / runner), *command], cwd=work, env=slurm_env, capture_output=True, text=True)
        assert out.returncode == 1, out.stderr
        assert "1 / 3 failed (jobs 2); first failed log: log.2.txt" in out.stderr
        results[runner] = {i: (work / f"log.{i}.txt").read_text() for i in (1, 2, 3)}
    for i in (1, 2, 3):
        assert _strip_times(results["slurm.pl"][i]) == _strip_times(results["run.pl"][i])
        assert f"PART {i} A;B $HOME" in results["slurm.pl"][i]
        assert f"# Ended (code {int(i == 2)})" in results["slurm.pl"][i]
    assert sorted(p.name for p in (tmp_path / "slurm.pl" / "q" / "log.JOB.txt" / "status").iterdir()) == ["1", "2", "3"]


def test_gpus_memory_and_threads_reach_slurm(slurm_env, tmp_path):
    query = 'echo gpus=${SLURM_GPUS_ON_NODE:-0} cpus=${SLURM_CPUS_PER_TASK:-1}; scontrol show job ${SLURM_JOB_ID}'
    out = subprocess.run([str(UTILS / "slurm.pl"), "--gpu", "1", "--mem", "100M", "--num_threads", "2",
                          "--max_jobs_run", "1", "JOB=1:2", "gpu.JOB.log", "bash", "-c", query],
                         cwd=tmp_path, env=slurm_env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for i in (1, 2):
        log = (tmp_path / f"gpu.{i}.log").read_text()
        assert "gpus=1 cpus=2" in log and "TresPerNode=gres:gpu:1" in log and "MinMemoryNode=100M" in log
        assert f"ArrayTaskId={i}" in log
    out = subprocess.run([str(UTILS / "slurm.pl"), "--gpu", "0", "cpu.log", "bash", "-c", query],
                         cwd=tmp_path, env=slurm_env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "gpus=0" in (tmp_path / "cpu.log").read_text()


def test_submission_error_is_reported(slurm_env, tmp_path):
    out = subprocess.run([str(UTILS / "slurm.pl"), "--partition", "no_such_partition", "x.log", "true"],
                         cwd=tmp_path, env=slurm_env, capture_output=True, text=True)
    assert out.returncode == 1
    assert "sbatch failed" in out.stderr and "no_such_partition" in out.stderr and "invalid partition" in out.stderr.lower()


def test_decoding_stage_through_slurm_matches_run_pl(slurm_env, tmp_path):
    outputs = {}
    for backend in ("local", "slurm"):
        recipe = copy_recipe(tmp_path / backend)
        cmd_sh = recipe / "cmd.sh"
        cmd_sh.write_text(cmd_sh.read_text().replace("cmd_backend=local", f"cmd_backend={backend}"))
        expected = make_decodable(recipe, utts_per_set=4)
        out = run_recipe(recipe, *decode_args("--inference_nj", "3"), env=slurm_env)
        assert out.returncode == 0, out.stdout + out.stderr
        outputs[backend] = {dset: read_hypotheses(recipe, dset) for dset in TEST_SETS}
        assert outputs[backend] == expected
    assert outputs["slurm"] == outputs["local"]
    assert (tmp_path / "slurm" / "mamba_mi" / "exp" / "asr_train_asr_conbimamba" / "decode_asr_asr_model_valid.acc.ave"
            / "logdir" / "q" / "asr_inference.JOB.log" / "status" / "3").read_text() == "0\n"


def test_slurm_pl_without_slurm_says_so(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "date", "sed", "cat"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    out = subprocess.run([str(UTILS / "slurm.pl"), "x.log", "true"], cwd=tmp_path, capture_output=True, text=True,
                         env=dict(os.environ, PATH=str(bin_dir)))
    assert out.returncode == 1 and "sbatch not found" in out.stderr and "cmd_backend=local" in out.stderr
