#!/usr/bin/env bash
# ConBiMamba ASR on LibriSpeech-100 with ("+ Decoder") or without ("- Decoder")
# an attention decoder: Table I of "Rethinking Mamba in Speech Processing by
# Self-Supervised Models". Without options it runs the offline mini corpus:
#   ./run.sh                          # mini corpus, + Decoder
#   ./run.sh --use_decoder false      # mini corpus, - Decoder (CTC only)
#   ./run.sh --corpus librispeech --ngpu 1 --librispeech_dir /data/LibriSpeech
# Any option of mamba_mi.sh can be given (./run.sh --help lists them).
. utils/common.sh   # set -Eeuo pipefail, log, die
. conf/presets.sh   # corpus_preset

corpus=mini mini_preset=default use_decoder=true
# Peek at the options that choose the configs; mamba_mi.sh parses all of them.
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --corpus | --mini_preset | --use_decoder) [ $((i + 1)) -lt ${#args[@]} ] && printf -v "${args[i]#--}" '%s' "${args[i + 1]}" ;;
        --corpus=* | --mini_preset=* | --use_decoder=*) kv=${args[i]#--} && printf -v "${kv%%=*}" '%s' "${kv#*=}" ;;
    esac
done
corpus_preset "${corpus}" "${mini_preset}"
if [ "${use_decoder}" = false ]; then suffix=_nodec; else suffix=""; fi

# the command that resumes a failed run: these options without --stage (the failed stage is added)
resume=()
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --stage) i=$((i + 1)) ;;
        --stage=*) ;;
        *) resume+=("${args[i]}") ;;
    esac
done
export MAMBA_MI_RESUME="./run.sh${resume[*]:+$(printf ' %q' "${resume[@]}")}"
./mamba_mi.sh --corpus "${corpus}" --nbpe "${nbpe}" --use_decoder "${use_decoder}" \
    --asr_config "${conf}/train_asr_conbimamba${suffix}.yaml" \
    --inference_config "${conf}/decode_asr${suffix}.yaml" --lm_config "${conf}/train_lm_transformer.yaml" \
    --train_set train_clean_100 --valid_set dev \
    --test_sets "dev_clean dev_other test_clean test_other" \
    --ssl_opts "${ssl_opts}" --downstream_opts "${downstream_opts}" --ssamba_opts "${ssamba_opts}" \
    --mi_n_utts "${mi_n_utts}" --mi_args "${mi_args}" "$@"
