# Completion markers of the recipe's steps (sourced by mamba_mi.sh and local/*.sh).
# A step writes DIR/.done last, holding the signature (inputs and options) of its
# outputs; a rerun with the same signature skips the step.

# is_done DIR SIGNATURE: DIR/.done holds SIGNATURE.
is_done() {
    [ -f "$1/.done" ] && [ "$(cat "$1/.done")" = "$2" ]
}

# mark_done DIR SIGNATURE: writes DIR/.done atomically.
mark_done() {
    printf '%s\n' "$2" >"$1/.done.tmp"
    mv "$1/.done.tmp" "$1/.done"
}

# sig_of FILE...: a short fingerprint of the files' contents.
sig_of() {
    cat "$@" | md5sum | cut -c1-16
}
