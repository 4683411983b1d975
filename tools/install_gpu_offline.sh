#!/usr/bin/env bash
# Install mamba-mi's GPU extras on an offline CUDA machine from a folder of downloads.
#
# On a machine with network, fill a folder with what the GPU box lacks, e.g.:
#   pip download --no-deps -d wheels espnet==202511 typeguard ...   (wheels for its Python)
#   pip download --no-deps --no-binary :all: --no-build-isolation ... (or fetch the sdists
#       mamba_ssm-2.3.2.post1.tar.gz and causal_conv1d-1.6.0.tar.gz from PyPI by URL)
# then on the GPU box:
#   tools/install_gpu_offline.sh --from wheels [--target DIR]
#
# Wheels (*.whl) are installed as they are (--no-deps: bring every one you need).
# mamba_ssm and causal_conv1d are optional: without them the Mamba layers run on the
# Triton kernels of espnet_mamba.nn (Triton comes with torch's CUDA builds; no compile
# step). When their sdists are in the folder, they are installed without their CUDA
# build, and their kernels are then compiled for the local card only
# (tools/build_cuda_kernels.py): on 16 cores about 2.5 minutes for mamba_ssm and 6 for
# causal_conv1d; the scan backend "auto" then prefers mamba_ssm's kernel.
set -euo pipefail

log() {
    local fname=${BASH_SOURCE[1]##*/}
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}

from=""
target=""
python=${PYTHON:-python3}
help_message="Usage: $0 --from DIR [--target DIR]
  --from DIR     folder with *.whl and, optionally, mamba_ssm/causal_conv1d *.tar.gz (required)
  --target DIR   install into DIR (add it to PYTHONPATH) instead of the current environment"
while [ $# -gt 0 ]; do
    case "$1" in
        --from) from=$2; shift 2 ;;
        --target) target=$2; shift 2 ;;
        -h|--help) echo "${help_message}"; exit 0 ;;
        *) echo "${help_message}" >&2; echo "error: unknown option $1" >&2; exit 2 ;;
    esac
done
[ -n "${from}" ] || { echo "${help_message}" >&2; exit 2; }
[ -d "${from}" ] || { echo "error: --from ${from}: no such directory" >&2; exit 1; }
tools=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

pip_args=(--no-index --no-deps --no-compile --disable-pip-version-check -q)
if [ -n "${target}" ]; then
    mkdir -p "${target}"
    target=$(cd "${target}" && pwd)
    pip_args+=(--upgrade --target "${target}")
    export PYTHONPATH="${target}${PYTHONPATH:+:${PYTHONPATH}}"
    site_dir=${target}
else
    site_dir=$("${python}" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
fi

shopt -s nullglob
wheels=("${from}"/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
    log "Installing ${#wheels[@]} wheels from ${from}"
    "${python}" -m pip install "${pip_args[@]}" "${wheels[@]}"
fi
# Pure-Python sdists (e.g. antlr4-python3-runtime, which has no wheel), built offline.
other_sdists=()
for sdist in "${from}"/*.tar.gz; do
    case "$(basename "${sdist}")" in mamba_ssm-*|causal_conv1d-*) ;; *) other_sdists+=("${sdist}") ;; esac
done
if [ ${#other_sdists[@]} -gt 0 ]; then
    log "Installing ${#other_sdists[@]} sdists from ${from}"
    "${python}" -m pip install "${pip_args[@]}" --no-build-isolation "${other_sdists[@]}"
fi

build_root=$(mktemp -d)
trap 'rm -rf "${build_root}"' EXIT
for sdist in "${from}"/mamba_ssm-*.tar.gz "${from}"/causal_conv1d-*.tar.gz; do
    name=$(basename "${sdist}" .tar.gz)
    tar -xzf "${sdist}" -C "${build_root}"
    src=${build_root}/${name}
    case "${name}" in
        mamba_ssm-*) extension=selective_scan_cuda ;;
        causal_conv1d-*) extension=causal_conv1d_cuda ;;
    esac
    log "Installing ${name} (Python part)"
    # FORCE_BUILD stops setup.py from fetching a prebuilt wheel; SKIP_CUDA_BUILD leaves
    # the kernels to build_cuda_kernels.py.
    MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE \
        CAUSAL_CONV1D_FORCE_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE \
        "${python}" -m pip install "${pip_args[@]}" --no-build-isolation "${src}"
    log "Compiling ${extension} for the local GPU"
    "${python}" "${tools}/build_cuda_kernels.py" --sdist-dir "${src}" --extension "${extension}" \
        --target "${site_dir}"
done

"${python}" - <<'PY'
import importlib

import torch  # noqa: F401  (loads libc10 and friends, which the extensions link to)
for name in ("triton", "selective_scan_cuda", "mamba_ssm", "causal_conv1d_cuda", "causal_conv1d"):
    try:
        importlib.import_module(name)
        print(f"ok: {name}")
    except ImportError as error:
        print(f"not available: {name} ({error})")
PY
log "Done"
