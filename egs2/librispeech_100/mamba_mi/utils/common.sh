# The conventions of the recipe's shell scripts, sourced first by each of them (run
# from the recipe directory):
#
#     . utils/common.sh
#     ## General
#     stage=1           # first step
#     python=python3    # python of the virtual environment (path.sh puts it first)
#     ngpu=0            # GPUs for training (0: CPU)
#     help_message="Usage: $0 [options]"
#     recipe_init "$@"  # parses the options above, then sources path.sh and cmd.sh
#
# Sets `set -Eeuo pipefail`. Progress goes to stdout through `log`, errors to stderr
# through `die` (or `error` where the script goes on to clean up). Python runs as
# ${python}. The helpers below are shared by mamba_mi.sh and local/*.sh: completion
# markers (.done signatures), ESPnet training and decoding, experiment names.
set -Eeuo pipefail
SECONDS=0

# log MESSAGE...: a line on stdout with the time and the script, line and function
# that called (the helpers of this file that called) log.
log() {
    local i=1
    while [ "${BASH_SOURCE[i]##*/}" = common.sh ] && [ $((i + 1)) -lt ${#BASH_SOURCE[@]} ]; do
        i=$((i + 1))
    done
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${BASH_SOURCE[i]##*/}:${BASH_LINENO[i - 1]}:${FUNCNAME[i]}) $*"
}

# error MESSAGE...: an error line on stderr with the time and the name of the script.
error() {
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${0##*/}) Error: $*" >&2
}

# die MESSAGE...: error MESSAGE, then exit 1.
die() {
    error "$@"
    exit 1
}

# recipe_init "$@": parses the options of the calling script (utils/parse_options.sh),
# fails on any other argument, and sources path.sh and cmd.sh.
recipe_init() {
    log "$0 $*"
    . "$(dirname "${BASH_SOURCE[0]}")/parse_options.sh"
    [ $# -eq 0 ] || die "unexpected arguments: $*"
    . ./path.sh
    . ./cmd.sh
}

# ---------------------------------------------------------------------------
# Checks of options and inputs

# require_int MIN NAME...: dies unless each option --NAME holds an integer >= MIN
# (MIN is 0 or 1).
require_int() {
    local min=$1 name re what
    shift
    if [ "${min}" -eq 0 ]; then
        re='^[0-9]+$' what="a non-negative integer"
    else
        re='^[1-9][0-9]*$' what="a positive integer"
    fi
    for name in "$@"; do
        [[ ${!name} =~ ${re} ]] || die "--${name} must be ${what}, got '${!name}'"
    done
}

# require_number NAME...: dies unless each option --NAME holds a non-negative number.
require_number() {
    local name
    for name in "$@"; do
        [[ ${!name} =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] || die "--${name} must be a non-negative number, got '${!name}'"
    done
}

# require_stages LAST: dies unless the options --stage and --stop_stage are integers
# from 1 to LAST and --stage is not after --stop_stage.
require_stages() {
    local name
    for name in stage stop_stage; do
        if [[ ! ${!name} =~ ^[1-9][0-9]*$ ]] || [ "${!name}" -gt "$1" ]; then
            die "--${name} must be an integer from 1 to $1, got '${!name}'"
        fi
    done
    [ "${stage}" -le "${stop_stage}" ] || die "--stage ${stage} comes after --stop_stage ${stop_stage}: nothing to run"
}

# require_files HINT FILE...: dies naming the first FILE that does not exist, followed
# by HINT (e.g. "run stage 1 first").
require_files() {
    local hint=$1 f
    shift
    for f in "$@"; do
        [ -e "${f}" ] || die "${f} is missing: ${hint}"
    done
}

# ---------------------------------------------------------------------------
# Small helpers

# min A B: the smaller of two integers.
min() {
    if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi
}

# evenly_spaced N FILE: N lines of FILE, evenly spaced (all of them when N is 0 or
# at least the number of lines).
evenly_spaced() {
    local n=$1 total
    total=$(wc -l <"$2")
    if [ "${n}" -eq 0 ] || [ "${n}" -ge "${total}" ]; then
        cat "$2"
    else
        awk -v n="${n}" -v t="${total}" 'BEGIN { last = -1 } { k = int((NR - 1) * n / t); if (k != last) { print; last = k } }' "$2"
    fi
}

# for_each N FUNCTION ARG...: FUNCTION ARG for each ARG. N = 1: one after the other in
# this shell. N > 1: at most N at a time, each in a background subshell with its own
# process group (stopping the script stops them and what they started), for items that
# write nothing that another item reads or writes. After a failure no further item
# starts and the running ones finish; for_each then returns 1 (a failed item says why).
for_each() {
    local n=$1 fn=$2 arg running=0 failed=0 traps
    local -a pids=()
    shift 2
    if [ "${n}" -le 1 ]; then
        for arg in "$@"; do "${fn}" "${arg}"; done
        return 0
    fi
    traps=$(trap -p INT TERM)
    trap 'for pid in "${pids[@]}"; do kill -TERM -- "-${pid}" 2>/dev/null || true; done; exit 130' INT TERM
    set -m
    for arg in "$@"; do
        if [ "${running}" -ge "${n}" ]; then
            wait -n || failed=1
            running=$((running - 1))
        fi
        [ "${failed}" -eq 0 ] || break
        "${fn}" "${arg}" &
        pids+=($!)
        running=$((running + 1))
    done
    while [ "${running}" -gt 0 ]; do
        wait -n || failed=1
        running=$((running - 1))
    done
    set +m
    trap - INT TERM
    eval "${traps}"
    return "${failed}"
}

# sig_of FILE...: a short fingerprint of the files' contents.
sig_of() {
    cat "$@" | md5sum | cut -c1-16
}

# ---------------------------------------------------------------------------
# Completion markers. A step writes DIR/.done last, holding the signature (inputs and
# options) of its outputs; a rerun with the same signature skips the step.

# is_done DIR SIGNATURE: DIR/.done holds SIGNATURE.
is_done() {
    [ -f "$1/.done" ] && [ "$(cat "$1/.done")" = "$2" ]
}

# mark_done DIR SIGNATURE: writes DIR/.done atomically.
mark_done() {
    printf '%s\n' "$2" >"$1/.done.tmp"
    mv "$1/.done.tmp" "$1/.done"
}

# ---------------------------------------------------------------------------
# ESPnet training and decoding. They use the calling script's options python, ngpu,
# train_threads, inference_nj, inference_ngpu, asr_inference_module, inference_args and
# cmd.sh's train_cmd and decode_cmd.

# is_trained EXP_DIR SIGNATURE CHECKPOINT: EXP_DIR is complete for SIGNATURE (.done) and
# holds CHECKPOINT; logs that its training is skipped.
is_trained() {
    is_done "$1" "$2" && [ -e "$1/$3" ] || return 1
    log "$1: trained (.done); skipping"
}

# start_training EXP_DIR SIGNATURE: clears EXP_DIR/.done and records SIGNATURE in
# EXP_DIR/.started. --resume continues an interrupted training, but only one started
# with the same signature: dies when EXP_DIR holds one started with another.
start_training() {
    mkdir -p "$1"
    rm -f "$1/.done"
    if [ -f "$1/.started" ] && [ "$(cat "$1/.started")" != "$2" ]; then
        die "$1 holds a training started with other options or data ($(cat "$1/.started")); remove $1 or train into another directory"
    fi
    printf '%s\n' "$2" >"$1/.started"
}

# train_espnet EXP_DIR SIGNATURE CHECKPOINT MODULE OPTION...: runs the ESPnet training
# `python -m MODULE --ngpu N [DDP] OPTION...` through ${train_cmd} with the log
# EXP_DIR/train.log, then checks that EXP_DIR/CHECKPOINT exists and marks EXP_DIR done
# for SIGNATURE. Call start_training first.
train_espnet() {
    local exp=$1 sig=$2 checkpoint=$3 module=$4
    shift 4
    local dist_opts=()
    [ "${ngpu}" -gt 1 ] && dist_opts=(--multiprocessing_distributed true)
    log "Training ${exp}; follow it with: tail -f ${exp}/train.log"
    OMP_NUM_THREADS=${train_threads} ${train_cmd} --gpu "${ngpu}" "${exp}/train.log" \
        ${python} -m "${module}" --ngpu "${ngpu}" "${dist_opts[@]}" "$@" \
        || die "training failed; see ${exp}/train.log"
    [ -e "${exp}/${checkpoint}" ] || die "training finished without ${exp}/${checkpoint}"
    mark_done "${exp}" "${sig}"
}

# decode_sets EXP_DIR MODEL_FILE CONFIG DECODE_DIR SIGNATURE SET=DATA_DIR... [-- OPTION...]:
# decodes the data dirs with ESPnet's asr_inference (model EXP_DIR/config.yaml +
# MODEL_FILE, decoding config CONFIG, extra OPTIONs) in ${inference_nj} jobs through
# ${decode_cmd}. Writes DECODE_DIR/SET/{text,ref,inference_config.yaml,.done} for each
# set not yet complete for SIGNATURE; logs in DECODE_DIR/logdir/asr_inference.JOB.log.
decode_sets() {
    local exp=$1 model_file=$2 config=$3 decode_dir=$4 sig=$5
    shift 5
    local sets=() pending=() dset logdir duplicates _nj i out
    local -A data_of=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
        sets+=("${1%%=*}")
        data_of[${1%%=*}]=${1#*=}
        shift
    done
    [ $# -eq 0 ] || shift
    for dset in "${sets[@]}"; do
        if is_done "${decode_dir}/${dset}" "${sig}"; then
            log "${decode_dir}/${dset}: complete (.done); skipping"
        else
            pending+=("${dset}")
        fi
    done
    [ ${#pending[@]} -eq 0 ] && return 0
    # All pending sets in one pass, so that each job loads the model once.
    logdir=${decode_dir}/logdir
    rm -rf "${logdir}"
    mkdir -p "${logdir}"
    for dset in "${pending[@]}"; do cat "${data_of[${dset}]}/wav.scp"; done | sort >"${logdir}/wav.scp"
    duplicates=$(cut -d' ' -f1 "${logdir}/wav.scp" | uniq -d | head -n 3)
    [ -z "${duplicates}" ] || die "utterance ids shared by the test sets ${pending[*]}, e.g. ${duplicates//$'\n'/ }"
    _nj=$(min "${inference_nj}" "$(wc -l <"${logdir}/wav.scp")")
    ${python} utils/split_scp.py --num_parts "${_nj}" "${logdir}/wav.scp" "${logdir}/keys.JOB.scp"
    log "Decoding ${pending[*]} ($(wc -l <"${logdir}/wav.scp") utterances) in ${_nj} jobs (log ${logdir}/asr_inference.JOB.log)"
    ${decode_cmd} --gpu "${inference_ngpu}" JOB=1:"${_nj}" "${logdir}/asr_inference.JOB.log" \
        ${python} -m "${asr_inference_module}" --batch_size 1 --ngpu "${inference_ngpu}" \
        --data_path_and_name_and_type "${logdir}/wav.scp,speech,sound" \
        --key_file "${logdir}/keys.JOB.scp" --asr_train_config "${exp}/config.yaml" \
        --asr_model_file "${model_file}" --output_dir "${logdir}/output.JOB" \
        --config "${config}" "$@" ${inference_args} \
        || die "decoding failed; see ${logdir}/asr_inference.*.log"
    for i in $(seq "${_nj}"); do cat "${logdir}/output.${i}/1best_recog/text"; done | sort >"${logdir}/text"
    for dset in "${pending[@]}"; do
        out=${decode_dir}/${dset}
        mkdir -p "${out}"
        # hypotheses of this set (an empty hypothesis may lack its line: scoring counts it empty)
        awk 'NR == FNR { keep[$1] = 1; next } ($1 in keep)' "${data_of[${dset}]}/wav.scp" "${logdir}/text" \
            >"${out}/text.tmp"
        mv "${out}/text.tmp" "${out}/text"
        # the references of the decoded utterances, for scoring
        cp "${data_of[${dset}]}/text" "${out}/ref"
        cp "${config}" "${out}/inference_config.yaml"
        mark_done "${out}" "${sig}"
    done
}

# ---------------------------------------------------------------------------
# Names of the pretrained models (stages 11-13)

# layers_of MODEL: the layers whose k-means give the iteration-2 targets of MODEL
# (mamba_hubert: the option hubert_label_layer; hubert: baseline_label_layer).
layers_of() {
    if [ "$1" = mamba_hubert ]; then echo "${hubert_label_layer}"; else echo "${baseline_label_layer}"; fi
}

# require_ssl_tag: dies unless the option ssl_tag is empty or letters and digits.
require_ssl_tag() {
    [[ ${ssl_tag} =~ ^[A-Za-z0-9]*$ ]] || die "--ssl_tag must be letters and digits, got '${ssl_tag}'"
}

# ssl_name MODEL: MODEL, or MODEL_TAG for a variant named by the option ssl_tag
# (e.g. mamba_hubert_nopos, trained from the configs <model>_it<N>_nopos.yaml).
ssl_name() {
    echo "$1${ssl_tag:+_${ssl_tag}}"
}

# it2_tag MODEL LAYER: the name of an iteration-2 model, MODEL[_TAG]_it2_LLAYER.
it2_tag() {
    echo "$(ssl_name "$1")_it2_L$2"
}

# ssl_it1_exp MODEL: the experiment directory of an iteration-1 pretraining.
ssl_it1_exp() {
    echo "${expdir}/ssl_$(ssl_name "$1")_it1"
}

# ssl_it2_exp MODEL LAYER: the experiment directory of an iteration-2 pretraining.
ssl_it2_exp() {
    echo "${expdir}/ssl_$(it2_tag "$1" "$2")"
}
