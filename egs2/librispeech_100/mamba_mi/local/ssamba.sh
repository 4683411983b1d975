#!/usr/bin/env bash
# SSAMBA pretraining (experiment E3): SSAST's joint masked-patch objective on the
# dumped training audio, with python -m espnet_mamba.bin.ssamba_train.
#
# Reads ${dumpdir}/raw/${train_set}/wav.scp ("<utt> <16 kHz audio file>") and writes
# ${expdir}/ssamba_${tag}/: config.yaml, model.pth (readable by
# espnet_mamba.ssamba.load_ssamba), checkpoints/last.pth and train.log.
# Idempotent: a finished run is left as it is, an interrupted one resumes from its
# last checkpoint.
#
# The public SSAMBA checkpoints (tiny/small/base) need no pretraining here: load
# them with espnet_mamba.ssamba.load_ssamba(path, norm_mean=-4.2677393,
# norm_std=4.5689974) for the MI analysis.
set -euo pipefail

. utils/common.sh  # log
help_message="Usage: $0 [options]   (run from the recipe directory)"

## Data
train_set=train_clean_100      # training set under ${dumpdir}/raw
dumpdir=dump                   # dump directory of the recipe
## Experiment
ssamba_config=conf/ssamba/mini.yaml # pretraining config (conf/ssamba/{mini,tiny,base}.yaml)
tag=""                         # experiment tag; empty: the config's file name (mini, tiny, ...)
expdir=exp                     # experiments go to ${expdir}/ssamba_${tag}
device=auto                    # auto (cuda when available), cpu, cuda
max_steps=""                   # override the config's max_steps (empty: keep)
resume=true                    # continue an interrupted run from its last checkpoint

. utils/parse_options.sh

if [ $# -ne 0 ]; then
    echo "$0: unexpected arguments: $*" >&2
    exit 1
fi

# Standalone use: the environment run.sh would have set up.
if [ -z "${MAMBA_MI_ROOT:-}" ]; then
    . ./path.sh
    . ./cmd.sh
fi

SECONDS=0
wav_scp=${dumpdir}/raw/${train_set}/wav.scp
if [ ! -f "${wav_scp}" ]; then
    log "Error: ${wav_scp} is missing; run the data stages first (./run.sh --stage 1 --stop_stage 4)"
    exit 1
fi
if [ ! -f "${ssamba_config}" ]; then
    log "Error: no such config ${ssamba_config}"
    exit 1
fi
if [ -z "${tag}" ]; then
    tag=$(basename "${ssamba_config}" .yaml)
fi
ssamba_exp=${expdir}/ssamba_${tag}
mkdir -p "${ssamba_exp}/log"

extra_args=()
if [ -n "${max_steps}" ]; then
    extra_args+=(--max_steps "${max_steps}")
fi

log "SSAMBA pretraining: ${wav_scp} -> ${ssamba_exp} (config ${ssamba_config}, log ${ssamba_exp}/train.log)"
${train_cmd:-utils/run.pl} "${ssamba_exp}/log/ssamba_train.log" \
    python -m espnet_mamba.bin.ssamba_train \
        --config "${ssamba_config}" \
        --wav_scp "${wav_scp}" \
        --output_dir "${ssamba_exp}" \
        --device "${device}" \
        --resume "${resume}" \
        ${extra_args[@]+"${extra_args[@]}"}

if [ ! -f "${ssamba_exp}/model.pth" ]; then
    log "Error: ${ssamba_exp}/model.pth was not written; see ${ssamba_exp}/train.log"
    exit 1
fi
log "SSAMBA model: ${ssamba_exp}/model.pth"
log "Successfully finished. [elapsed=${SECONDS}s]"
