#!/usr/bin/env bash
# SSAMBA pretraining (experiment E3): SSAST's joint masked-patch objective on the
# dumped training audio, with python -m espnet_mamba.bin.ssamba_train.
#
# Reads ${dumpdir}/raw/${train_set}/wav.scp ("<utt> <16 kHz audio file>") and writes
# ${expdir}/ssamba_${tag}/: config.yaml, model.pth (readable by
# espnet_mamba.ssamba.load_ssamba), checkpoints/last.pth and train.log.
# Idempotent: a run that finished for the same config, data and --max_steps (.done)
# is skipped, an interrupted one resumes from its last checkpoint.
#
# The public SSAMBA checkpoints (tiny/small/base) need no pretraining here: load
# them with espnet_mamba.ssamba.load_ssamba(path, norm_mean=-4.2677393,
# norm_std=4.5689974) for the MI analysis.
. utils/common.sh  # set -Eeuo pipefail, log, die, recipe_init and the shared helpers

## General
ngpu=0                         # GPUs (0: CPU; SSAMBA pretraining uses one GPU when given any)
python=python3                 # python of the virtual environment (path.sh puts it first)
## Data
train_set=train_clean_100      # training set under ${dumpdir}/raw
dumpdir=dump                   # dump directory of the recipe
## Experiment
ssamba_config=conf/ssamba/mini.yaml # pretraining config (conf/ssamba/{mini,tiny,base}.yaml)
tag=""                         # experiment tag; empty: the config's file name (mini, tiny, ...)
expdir=exp                     # experiments go to ${expdir}/ssamba_${tag}
max_steps=""                   # override the config's max_steps (empty: keep)
resume=true                    # continue an interrupted run from its last checkpoint
ssamba_train_module=espnet_mamba.bin.ssamba_train # python -m module for pretraining

help_message="Usage: $0 [options]   (run from the recipe directory)"
recipe_init "$@"

require_int 0 ngpu
[ -z "${max_steps}" ] || require_int 1 max_steps
wav_scp=${dumpdir}/raw/${train_set}/wav.scp
require_files "run the data stages first (./run.sh --stage 1 --stop_stage 4)" "${wav_scp}"
[ -f "${ssamba_config}" ] || die "--ssamba_config ${ssamba_config}: no such config"
if [ -z "${tag}" ]; then
    tag=$(basename "${ssamba_config}" .yaml)
fi
ssamba_exp=${expdir}/ssamba_${tag}
if [ "${ngpu}" -eq 0 ]; then device=cpu gpus=0; else device=cuda gpus=1; fi

extra_args=()
if [ -n "${max_steps}" ]; then
    extra_args+=(--max_steps "${max_steps}")
fi

sig="config=$(sig_of "${ssamba_config}") data=$(sig_of "${wav_scp}") max_steps=${max_steps}"
if is_done "${ssamba_exp}" "${sig}" && [ -f "${ssamba_exp}/model.pth" ]; then
    log "${ssamba_exp}: trained (.done); skipping"
else
    mkdir -p "${ssamba_exp}/log"
    rm -f "${ssamba_exp}/.done"
    log "SSAMBA pretraining on ${device}: ${wav_scp} -> ${ssamba_exp} (config ${ssamba_config}, log ${ssamba_exp}/train.log)"
    ${train_cmd} --gpu "${gpus}" "${ssamba_exp}/log/ssamba_train.log" \
        ${python} -m "${ssamba_train_module}" \
            --config "${ssamba_config}" \
            --wav_scp "${wav_scp}" \
            --output_dir "${ssamba_exp}" \
            --device "${device}" \
            --resume "${resume}" \
            ${extra_args[@]+"${extra_args[@]}"} \
        || die "SSAMBA pretraining failed; see ${ssamba_exp}/log/ssamba_train.log and ${ssamba_exp}/train.log"
    [ -f "${ssamba_exp}/model.pth" ] || die "${ssamba_exp}/model.pth was not written; see ${ssamba_exp}/train.log"
    mark_done "${ssamba_exp}" "${sig}"
fi
log "SSAMBA model: ${ssamba_exp}/model.pth"
log "Successfully finished. [elapsed=${SECONDS}s]"
