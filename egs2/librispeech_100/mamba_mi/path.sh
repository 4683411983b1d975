# Environment of the recipe: source it from the recipe directory (run.sh does).
#
# Uses the virtual environment <repository root>/.venv, creating it with
# tools/install.sh when it is missing, and puts KenLM's lmplz/build_binary and the
# repository (for `python -m espnet_mamba...`) within reach. MAMBA_MI_ROOT, when
# set, names the repository (for a copy of the recipe outside it).

MAMBA_MI_ROOT=${MAMBA_MI_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)}
export MAMBA_MI_ROOT

if [ ! -x "${MAMBA_MI_ROOT}/.venv/bin/python" ]; then
    echo "$(date '+%Y-%m-%dT%H:%M:%S') (path.sh) ${MAMBA_MI_ROOT}/.venv is missing: running tools/install.sh" >&2
    "${MAMBA_MI_ROOT}/tools/install.sh" || {
        echo "path.sh: tools/install.sh failed; see its output above" >&2
        return 1 2>/dev/null || exit 1
    }
fi

# activate by hand (the venv's activate script is not set -u safe)
export VIRTUAL_ENV="${MAMBA_MI_ROOT}/.venv"
export PATH="${VIRTUAL_ENV}/bin:${PATH}"
export PYTHONPATH="${MAMBA_MI_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"

# Sorting must not depend on the user's locale (Kaldi-style files are sorted bytewise).
export LC_ALL=C
# Python output unbuffered, so logs follow progress.
export PYTHONUNBUFFERED=1
# One BLAS/OpenMP thread per process unless the user asks for more: the recipe runs
# several processes side by side (--nj).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Waiting OpenMP threads sleep instead of spinning, so that the threads of one process
# leave the cores to the others (README.md: "Mini corpus: what to expect").
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
