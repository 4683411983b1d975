# Shell helpers of the recipe's scripts (sourced by mamba_mi.sh and local/*.sh).

# log MESSAGE...: a line with the time and the calling script, line and function.
log() {
    local fname=${BASH_SOURCE[1]##*/}
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}

# min A B: the smaller of two integers.
min() {
    if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi
}

# require_int MIN NAME...: exit with an error unless each option --NAME holds an
# integer >= MIN (MIN is 0 or 1).
require_int() {
    local min=$1 name re what
    shift
    if [ "${min}" -eq 0 ]; then
        re='^[0-9]+$' what="a non-negative integer"
    else
        re='^[1-9][0-9]*$' what="a positive integer"
    fi
    for name in "$@"; do
        if [[ ! ${!name} =~ ${re} ]]; then
            log "Error: --${name} must be ${what}, got '${!name}'"
            exit 1
        fi
    done
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

# Completion markers of the recipe's steps. A step writes DIR/.done last, holding
# the signature (inputs and options) of its outputs; a rerun with the same
# signature skips the step.

# is_done DIR SIGNATURE: DIR/.done holds SIGNATURE.
is_done() {
    [ -f "$1/.done" ] && [ "$(cat "$1/.done")" = "$2" ]
}

# mark_done DIR SIGNATURE: writes DIR/.done atomically.
mark_done() {
    printf '%s\n' "$2" >"$1/.done.tmp"
    mv "$1/.done.tmp" "$1/.done"
}

# start_training EXP_DIR SIGNATURE: clears EXP_DIR/.done and records SIGNATURE in
# EXP_DIR/.started. --resume continues an interrupted training, but only one started
# with the same signature: fails when EXP_DIR holds one started with another.
start_training() {
    mkdir -p "$1"
    rm -f "$1/.done"
    if [ -f "$1/.started" ] && [ "$(cat "$1/.started")" != "$2" ]; then
        log "Error: $1 holds a training started with other options or data ($(cat "$1/.started")); remove $1"
        return 1
    fi
    printf '%s\n' "$2" >"$1/.started"
}

# sig_of FILE...: a short fingerprint of the files' contents.
sig_of() {
    cat "$@" | md5sum | cut -c1-16
}
