#!/usr/bin/env bash
# Run a command, or an array of jobs, on the local machine, logging each job.
#
# Usage:
#   utils/run.pl [options] LOGFILE COMMAND...
#   utils/run.pl [options] JOB=1:N LOGFILE COMMAND...
#
# With JOB=1:N (any upper-case name works: TASK=1:4), the N jobs run in parallel,
# at most --max_jobs_run of them at once; every occurrence of the name in LOGFILE
# and COMMAND is replaced by the job number. COMMAND runs through bash, so a quoted
# "|" or ">" acts as a pipe or redirection:
#
#   utils/run.pl JOB=1:4 exp/log/decode.JOB.log python decode.py --part JOB
#   utils/run.pl exp/log/count.log wc -l data/train/text "|" tee count.txt
#
# An argument holding white space is passed as one word. Each log starts with the
# command and ends with its exit code and run time. run.pl exits 1 when any job
# failed, naming the failed jobs and their logs.
#
# Options:
#   --max_jobs_run N   run at most N jobs at the same time (default: all)
#   --gpu N, --mem M, --num_threads N, --time T
#                      accepted and ignored (for compatibility with cluster runners)
#
# To run jobs through a cluster, set train_cmd/decode_cmd in cmd.sh to a wrapper with
# the same interface; see the comments there.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

max_jobs_run=0
while [ $# -gt 0 ]; do
    case "$1" in
        --max_jobs_run | --max-jobs-run)
            max_jobs_run=$2
            shift 2
            ;;
        --gpu | --mem | --num_threads | --num-threads | --time | --config)
            shift 2
            ;;
        --help | -h)
            usage
            exit 0
            ;;
        --*)
            echo "$0: unknown option $1" >&2
            exit 1
            ;;
        *)
            break
            ;;
    esac
done

if [[ ! ${max_jobs_run} =~ ^[0-9]+$ ]]; then
    echo "$0: --max_jobs_run must be a non-negative integer, got '${max_jobs_run}'" >&2
    exit 1
fi

jobname=""
first=1
last=1
if [ $# -gt 0 ] && [[ $1 =~ ^([A-Z][A-Z0-9_]*)=([0-9]+):([0-9]+)$ ]]; then
    jobname=${BASH_REMATCH[1]}
    first=${BASH_REMATCH[2]}
    last=${BASH_REMATCH[3]}
    shift
    if [ "${first}" -gt "${last}" ] || [ "${first}" -lt 1 ]; then
        echo "$0: bad job range ${jobname}=${first}:${last}" >&2
        exit 1
    fi
elif [ $# -gt 0 ] && [[ $1 =~ ^[A-Z][A-Z0-9_]*=[^/]*$ ]]; then
    echo "$0: bad job range '$1' (expected NAME=FIRST:LAST, e.g. JOB=1:4)" >&2
    exit 1
fi

if [ $# -lt 2 ]; then
    usage >&2
    exit 1
fi
logfile=$1
shift

# Build the command line: words pass as they are (so "|" is a pipe); an argument
# holding white space or quotes is quoted so that it stays one word.
cmd=""
for arg in "$@"; do
    if [[ ${arg} =~ [[:space:]\'\"] ]] || [ -z "${arg}" ]; then
        cmd+="$(printf '%q' "${arg}") "
    else
        cmd+="${arg} "
    fi
done

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
    local id=$1 log=${logfile} command=${cmd}
    if [ -n "${jobname}" ]; then
        log=${log//${jobname}/${id}}
        command=${command//${jobname}/${id}}
    fi
    mkdir -p "$(dirname "${log}")"
    local start=${SECONDS} rc=0
    {
        echo "# ${command}"
        echo "# Started at $(date)"
        echo "#"
    } >"${log}"
    bash -c "${command}" </dev/null >>"${log}" 2>&1 || rc=$?
    {
        echo "# Accounting: time=$((SECONDS - start)) threads=1"
        echo "# Ended (code ${rc}) at $(date), elapsed time $((SECONDS - start)) seconds"
    } >>"${log}"
    echo "${rc}" >"${status_dir}/${id}"
}

for ((id = first; id <= last; id++)); do
    if [ "${max_jobs_run}" -gt 0 ]; then
        while [ "$(jobs -rp | wc -l)" -ge "${max_jobs_run}" ]; do
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

failed=()
for ((id = first; id <= last; id++)); do
    rc=$(cat "${status_dir}/${id}" 2>/dev/null || echo "missing")
    [ "${rc}" = 0 ] || failed+=("${id}")
done
if [ ${#failed[@]} -gt 0 ]; then
    if [ -n "${jobname}" ]; then
        echo "$0: ${#failed[@]} / $((last - first + 1)) failed (jobs ${failed[*]}); first failed log: ${logfile//${jobname}/${failed[0]}}" >&2
    else
        echo "$0: job failed; log is in ${logfile}" >&2
    fi
    exit 1
fi
exit 0
