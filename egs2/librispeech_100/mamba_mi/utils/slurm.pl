#!/usr/bin/env bash
# Run a command, or an array of jobs, through Slurm, with the interface of utils/run.pl.
#
# Usage:
#   utils/slurm.pl [options] LOGFILE COMMAND...
#   utils/slurm.pl [options] JOB=1:N LOGFILE COMMAND...
#
# Submits the jobs as one Slurm job array (sbatch --array) and waits until all of them
# have ended. JOB, the words of COMMAND and the logs are as with utils/run.pl: each
# job writes its log (LOGFILE with JOB replaced) from the node that runs it, so the
# working directory must lie on a file system that the nodes share. The jobs run in
# the working directory with the caller's environment (sbatch's default
# --export=ALL). The job scripts and Slurm's own output of each job go to
# <directory of LOGFILE>/q/<name of LOGFILE>/. slurm.pl exits 1 when any job failed
# (a non-zero exit code, or it never finished: cancelled, out of time or memory),
# naming the failed jobs and the first failed log. Ctrl-C cancels the jobs.
#
#   utils/slurm.pl --gpu 1 --mem 16G exp/train.log python -m espnet_mamba.bin.asr_train ...
#
# Options (empty: Slurm's default):
#   --gpu N            GPUs per job: --gres=gpu:N (0: none)
#   --mem M            memory per job (--mem, e.g. 16G)
#   --num_threads N    CPUs per job (--cpus-per-task)
#   --time T           time limit per job (--time, e.g. 4:00:00)
#   --partition P      partition (--partition)
#   --gpu_partition P  partition of jobs with --gpu N > 0 (default: --partition)
#   --account A        account to charge (--account)
#   --max_jobs_run N   run at most N jobs of the array at the same time (default: all)
#
# cmd.sh selects this script with cmd_backend=slurm.

usage() {
    sed -n '2,/^$/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

. "$(dirname "$0")/jobs.sh"
parse_job_args "$@"
command -v sbatch >/dev/null || die "sbatch not found: utils/slurm.pl needs Slurm's client commands (or set cmd_backend=local in cmd.sh)"

jobs_sh=$(cd "$(dirname "$0")" && pwd)/jobs.sh
work=$(dirname "${logfile}")/q/$(basename "${logfile}")
rm -rf "${work}"
mkdir -p "${work}/status"
work=$(cd "${work}" && pwd)

# one script per job (its log, its command, its exit code) and the array's script
for ((id = first; id <= last; id++)); do
    printf '. %q\nrc=0\nrun_logged %q %q || rc=$?\necho "${rc}" >%q\nexit "${rc}"\n' \
        "${jobs_sh}" "$(job_log "${id}")" "$(job_command "${id}")" "${work}/status/${id}" >"${work}/job.${id}.sh"
done
printf '#!/usr/bin/env bash\nexec bash %q/job."${SLURM_ARRAY_TASK_ID}".sh\n' "${work}" >"${work}/array.sh"

array=${first}-${last}
[ "${opt_max_jobs_run}" -gt 0 ] && array+=%${opt_max_jobs_run}
sbatch_args=(--parsable --wait --job-name "$(basename "${logfile}")" --chdir "${PWD}"
    --output "${work}/slurm.%a.out" --array "${array}")
partition=${opt_partition}
if [ "${opt_gpu}" -gt 0 ]; then
    sbatch_args+=(--gres "gpu:${opt_gpu}")
    partition=${opt_gpu_partition:-${opt_partition}}
fi
[ -n "${partition}" ] && sbatch_args+=(--partition "${partition}")
[ -n "${opt_mem}" ] && sbatch_args+=(--mem "${opt_mem}")
[ -n "${opt_num_threads}" ] && sbatch_args+=(--cpus-per-task "${opt_num_threads}")
[ -n "${opt_time}" ] && sbatch_args+=(--time "${opt_time}")
[ -n "${opt_account}" ] && sbatch_args+=(--account "${opt_account}")
printf '%q ' sbatch "${sbatch_args[@]}" "${work}/array.sh" >"${work}/sbatch.cmd"

cancel() {
    [ -s "${work}/sbatch.out" ] && scancel "$(head -n 1 "${work}/sbatch.out" | cut -d';' -f1)" 2>/dev/null
    exit 130
}
trap cancel INT TERM
sbatch "${sbatch_args[@]}" "${work}/array.sh" >"${work}/sbatch.out" 2>"${work}/sbatch.err" &
wait $! || true
trap - INT TERM
[ -s "${work}/sbatch.out" ] || die "sbatch failed ($(cat "${work}/sbatch.cmd")): $(cat "${work}/sbatch.err")"

check_job_status "${work}/status" "Slurm's output of job ID: ${work}/slurm.ID.out"
