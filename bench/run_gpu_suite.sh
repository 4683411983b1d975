#!/usr/bin/env bash
# Run the GPU benchmarks of docs/benchmarks.md on an (offline) CUDA machine.
#
# Usage: bench/run_gpu_suite.sh --wheels DIR --out DIR [--only "scan encoder ..."] [--site DIR]
#   --wheels DIR   wheels + mamba_ssm/causal_conv1d sdists (tools/install_gpu_offline.sh)
#   --out DIR      where the tables and logs go
#   --site DIR     install into DIR, or reuse it when a previous run installed there
#   --corpus DIR   LibriSpeech-layout corpus for the "asr" job (one training epoch)
set -euo pipefail
wheels="" out="" only="scan encoder mine hubert" site="" corpus=""
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) wheels=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --site) site=$2; shift 2 ;;
        --corpus) corpus=$2; shift 2 ;;
        *) echo "usage: $0 --wheels DIR --out DIR [--only LIST]" >&2; exit 2 ;;
    esac
done
[ -n "${wheels}" ] && [ -n "${out}" ] || { echo "usage: $0 --wheels DIR --out DIR" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "${out}"
[ -n "${site}" ] || site=$(mktemp -d)/site
if [ ! -f "${site}/selective_scan_cuda.so" ] && ! ls "${site}"/selective_scan_cuda*.so >/dev/null 2>&1; then
    tools/install_gpu_offline.sh --from "${wheels}" --target "${site}" 2>&1 | tee "${out}/install.log"
fi
export PYTHONPATH="${root}:${site}${PYTHONPATH:+:${PYTHONPATH}}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "${out}/card.txt"
for job in ${only}; do
    case "${job}" in
        scan) python3 bench/check_scan_backends.py --out "${out}/scan_backends.md" ;;
        encoder)
            for dtype in float32 tfloat32 bfloat16; do
                python3 bench/bench_encoder.py --dtype "${dtype}" --out "${out}/encoder_${dtype}.md"
            done ;;
        mine) python3 bench/bench_mine.py --out "${out}/mine.md" ;;
        hubert) python3 bench/bench_hubert.py --out "${out}/hubert.md" ;;
        asr) python3 bench/bench_asr_epoch.py --corpus "${corpus}" \
                --config egs2/librispeech_100/mamba_mi/conf/train_asr_conbimamba.yaml \
                --ngpu "$(python3 -c 'import torch; print(torch.cuda.device_count())')" \
                --out "${out}/asr_epoch.md" ;;
        *) echo "unknown job ${job}" >&2; exit 2 ;;
    esac 2>&1 | tee "${out}/${job}.log"
done
