# What utils/run.pl and utils/slurm.pl share: their command line, the command of each
# job, and the job logs. Sourced by both.
#
#   parse_job_args "$@"  sets the options (opt_*), jobname, first, last, logfile and
#                        job_args (the command and its arguments)
#   job_log ID           the log file of job ID
#   job_command ID       the command line of job ID, quoted for bash
#   run_logged LOG CMD   runs CMD with bash, its output and accounting lines in LOG
#   check_job_status DIR fails naming the failed jobs unless DIR/ID holds 0 for each job

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Words that job_command leaves unquoted, so that COMMAND can hold pipes and redirections.
shell_operators=("|" "|&" "||" "&&" ";" "<" ">" ">>" "2>" "2>>" "&>" "&>>" "2>&1" ">&2" "1>&2")

parse_job_args() {
    opt_max_jobs_run=0 opt_gpu=0 opt_mem="" opt_num_threads="" opt_time=""
    opt_partition="" opt_gpu_partition="" opt_account=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --help | -h)
                usage
                exit 0
                ;;
            --max_jobs_run | --max-jobs-run | --gpu | --mem | --num_threads | --num-threads | --time \
                | --partition | --gpu_partition | --gpu-partition | --account)
                [ $# -ge 2 ] || die "option $1 needs a value"
                local name=${1#--}
                printf -v "opt_${name//-/_}" '%s' "$2"
                shift 2
                ;;
            --*)
                die "unknown option $1 (see $0 --help)"
                ;;
            *)
                break
                ;;
        esac
    done
    [[ ${opt_max_jobs_run} =~ ^[0-9]+$ ]] || die "--max_jobs_run must be a non-negative integer, got '${opt_max_jobs_run}'"
    [[ ${opt_gpu} =~ ^[0-9]+$ ]] || die "--gpu must be a non-negative integer, got '${opt_gpu}'"
    [ -z "${opt_num_threads}" ] || [[ ${opt_num_threads} =~ ^[1-9][0-9]*$ ]] \
        || die "--num_threads must be a positive integer, got '${opt_num_threads}'"

    jobname="" first=1 last=1
    if [ $# -gt 0 ] && [[ $1 =~ ^([A-Z][A-Z0-9_]*)=([0-9]+):([0-9]+)$ ]]; then
        jobname=${BASH_REMATCH[1]} first=${BASH_REMATCH[2]} last=${BASH_REMATCH[3]}
        shift
        if [ "${first}" -gt "${last}" ] || [ "${first}" -lt 1 ]; then
            die "bad job range ${jobname}=${first}:${last}"
        fi
    elif [ $# -gt 0 ] && [[ $1 =~ ^[A-Z][A-Z0-9_]*=[^/]*$ ]]; then
        die "bad job range '$1' (expected NAME=FIRST:LAST, e.g. JOB=1:4)"
    fi
    if [ $# -lt 2 ]; then
        usage >&2
        exit 1
    fi
    logfile=$1
    shift
    job_args=("$@")
}

job_log() {
    if [ -n "${jobname}" ]; then echo "${logfile//${jobname}/$1}"; else echo "${logfile}"; fi
}

job_command() {
    local arg op word words=()
    for arg in "${job_args[@]}"; do
        [ -n "${jobname}" ] && arg=${arg//${jobname}/$1}
        word=$(printf '%q' "${arg}")
        for op in "${shell_operators[@]}"; do
            [ "${arg}" = "${op}" ] && word=${arg}
        done
        words+=("${word}")
    done
    echo "${words[*]}"
}

run_logged() {
    local log=$1 command=$2 start=${SECONDS} rc=0
    mkdir -p "$(dirname "${log}")"
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
    return "${rc}"
}

# check_job_status STATUS_DIR [NOTE]: dies naming the failed jobs and the first failed
# log (and NOTE) unless STATUS_DIR/ID holds 0 for every job ID.
check_job_status() {
    local id rc failed=()
    for ((id = first; id <= last; id++)); do
        rc=$(cat "$1/${id}" 2>/dev/null || echo missing)
        [ "${rc}" = 0 ] || failed+=("${id}")
    done
    [ ${#failed[@]} -eq 0 ] && return 0
    if [ -n "${jobname}" ]; then
        die "${#failed[@]} / $((last - first + 1)) failed (jobs ${failed[*]}); first failed log: $(job_log "${failed[0]}")${2:+ ($2)}"
    fi
    die "job failed; log is in ${logfile}${2:+ ($2)}"
}
