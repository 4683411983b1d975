#!/usr/bin/env bash
# Run a command, or an array of jobs, on the local machine, logging each job.
#
# Usage:
#   utils/run.pl [options] LOGFILE COMMAND...
#   utils/run.pl [options] JOB=1:N LOGFILE COMMAND...
#
# With JOB=1:N (any upper-case name works: TASK=1:4), the N jobs run in parallel,
# at most --max_jobs_run of them at once; every occurrence of the name in LOGFILE
# and COMMAND is replaced by the job number. Each argument reaches COMMAND as it is
# (one word, nothing expanded), except the words | |& || && ; < > >> 2> 2>> &> &>>
# 2>&1 >&2 1>&2, which act as pipes, lists and redirections:
#
#   utils/run.pl JOB=1:4 exp/log/decode.JOB.log python decode.py --part JOB
#   utils/run.pl exp/log/count.log wc -l data/train/text "|" tee count.txt
#
# Each log starts with the command and ends with its exit code and run time. run.pl
# exits 1 when any job failed, naming the failed jobs and their logs.
#
# Options:
#   --max_jobs_run N   run at most N jobs at the same time (default: all)
#   --gpu N, --mem M, --num_threads N, --time T, --partition P, --gpu_partition P,
#   --account A        accepted and ignored (the options of utils/slurm.pl)
#
# cmd.sh chooses between this script and utils/slurm.pl (same interface).

usage() {
    sed -n '2,/^$/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

. "$(dirname "$0")/jobs.sh"
parse_job_args "$@"

status_dir=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill -TERM "${pid}" 2>/dev/null || true
    done
    rm -rf "${status_dir}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

run_job() {
    # run_job ID: run one job with its log; writes its exit code to the status dir.
    local rc=0
    run_logged "$(job_log "$1")" "$(job_command "$1")" || rc=$?
    echo "${rc}" >"${status_dir}/$1"
}

for ((id = first; id <= last; id++)); do
    if [ "${opt_max_jobs_run}" -gt 0 ]; then
        while [ "$(jobs -rp | wc -l)" -ge "${opt_max_jobs_run}" ]; do
            wait -n || true
        done
    fi
    run_job "${id}" &
    pids+=($!)
done
for pid in "${pids[@]}"; do
    wait "${pid}" || true
done
pids=()

check_job_status "${status_dir}"
