#!/usr/bin/env bash
# Stage 12 of the recipe: ASR with the pretrained models of stage 11 (Table II).
#
#   step 1  CTC fine-tuning of each iteration-2 model         exp/ft_<model>_it2_L<L>[_char]
#   step 2  decoding of the fine-tuned models: CTC beam search without an LM and with
#           the 4-gram of stage 6                             .../decode_ctc_*, decode_ctc_ngram_*
#   step 3  frozen upstream (S3PRL, weighted sum of all layers) + 12-layer Conformer
#           with CTC/attention                                exp/s3prl_conformer_<model>_it2_L<L>[_char]
#   step 4  decoding of the Conformer models (no LM)          .../decode_conformer_*
#   step 5  scoring (utils/score_wer.py) and the Table II section of RESULTS.md
#
# Models: Mamba-HuBERT for each layer of --hubert_label_layer and the Transformer
# HuBERT for --baseline_label_layer (exp/ssl_<model>_it2_L<L>/<ssl_model>). Reads
# dump/raw/<set> (stages 3-4), the BPE token list (stage 5) and exp/ngram (stage 6);
# with --token_type char the targets are characters (then give a character n-gram).
# Experiment names do not start with asr_, so stage 10's Table I leaves them out.
# Each step skips work that is complete for the same inputs and options.
#
# Example (mini corpus, as stage 12 runs it):
#   local/downstream.sh --conf_dir conf/downstream/mini --nbpe 150 --valid_utts 40
. utils/common.sh  # set -Eeuo pipefail, log, die, recipe_init and the shared helpers

## General
stage=1                 # first step (1 fine-tune, 2 decode, 3 Conformer, 4 decode, 5 score)
stop_stage=5            # last step
ngpu=0                  # GPUs for training (0: CPU)
train_threads=1         # CPU threads of a training process (OMP_NUM_THREADS; more threads than free cores slow it down a lot)
inference_nj=2          # parallel decoding jobs
inference_ngpu=0        # GPUs of each decoding job (0: CPU)
python=python3          # python of the virtual environment (path.sh puts it first)
dumpdir=dump            # dumped audio (dump/raw/<set>)
expdir=exp              # experiments
## Data and tokens
train_set=train_clean_100 # training set (dumped by stages 3-4)
valid_set=dev           # validation set
valid_utts=0            # validate on this many validation utterances, evenly spaced (0: all)
test_sets="test_clean test_other" # evaluation sets (Table II: test-clean, test-other)
test_utts=0             # decode this many utterances of each evaluation set, evenly spaced (0: all)
token_type=bpe          # targets: bpe (the token list of stage 5) or char (made here from the training text)
nbpe=5000               # sentencepiece vocabulary size of stage 5
bpemode=unigram         # sentencepiece model type of stage 5
use_ngram=true          # also decode the fine-tuned models with the n-gram LM
ngram_file=""           # n-gram over the targets (empty: exp/ngram/<ngram_num>gram.bin of stage 6, BPE only)
ngram_num=4             # its order (for the default path)
ngram_weight=""         # n-gram weight (empty: the decoding config's)
## Pretrained models (stage 11)
models="mamba_hubert hubert" # mamba_hubert (ConBiMamba) and/or hubert (Transformer baseline)
hubert_label_layer="6 9" # Mamba-HuBERT models: iteration-2 target layer(s)
baseline_label_layer=6  # Transformer HuBERT model: its iteration-2 target layer
ssl_model=latest.pth    # checkpoint of each pretrained model
ssl_tag=""              # the variant of stage 11's --ssl_tag (exp/ssl_<model>_<tag>_it2_L<L>)
## Downstream
conf_dir=conf/downstream # configs finetune_ctc.yaml, decode_ctc.yaml, conformer_s3prl.yaml, decode_conformer.yaml
ft_beam_size=""         # beam of the fine-tuned models' decoding (empty: decode_ctc.yaml's; paper 500)
inference_ft_model=valid.loss.ave.pth # checkpoint of a fine-tuned model to decode
inference_conformer_model=valid.acc.ave.pth # checkpoint of a Conformer model to decode
finetune_args=""        # extra options of asr_train for fine-tuning
conformer_args=""       # extra options of asr_train for the Conformer models
inference_args=""       # extra options of asr_inference
model_jobs=1            # trainings (steps 1, 3) and decodings (steps 2, 4) run at once, one process each
asr_train_module=espnet_mamba.bin.asr_train # python -m module for training
asr_inference_module=espnet_mamba.bin.asr_inference # python -m module for decoding
results=RESULTS.md      # step 5 writes its Table II section here

help_message="Usage: $0 [options]   (run from the recipe directory; stage 12 of mamba_mi.sh)"
recipe_init "$@"

upstream_of() {
    if [ "$1" = mamba_hubert ]; then echo mamba_hubert_local; else echo transformer_hubert_local; fi
}
model_tag() {
    # valid.loss.ave.pth -> valid.loss.ave
    echo "$1" | sed -e "s/\//_/g" -e "s/\.[^.]*$//g"
}

# ---------------------------------------------------------------------------
# Checks and derived settings
require_int 1 train_threads inference_nj ngram_num model_jobs
require_int 0 valid_utts test_utts ngpu inference_ngpu
require_stages 5
require_ssl_tag
[ -z "${ft_beam_size}" ] || require_int 1 ft_beam_size
for model in ${models}; do
    case "${model}" in
        mamba_hubert | hubert) ;;
        *) die "--models: unknown model '${model}' (mamba_hubert or hubert)" ;;
    esac
done
for f in finetune_ctc decode_ctc conformer_s3prl decode_conformer; do
    [ -f "${conf_dir}/${f}.yaml" ] || die "${conf_dir}/${f}.yaml: no such config (--conf_dir)"
done
data_feats=${dumpdir}/raw
case "${token_type}" in
    bpe)
        token_dir=data/token_list/bpe_${bpemode}${nbpe}
        token_list=${token_dir}/tokens.txt
        token_opts=(--token_type bpe --bpemodel "${token_dir}/bpe.model")
        exp_suffix=""
        ngram_file=${ngram_file:-${expdir}/ngram/${ngram_num}gram.bin}
        required=("${token_list}" "${token_dir}/bpe.model")
        ;;
    char)
        token_list=data/token_list/char/tokens.txt
        token_opts=(--token_type char)
        exp_suffix=_char
        if "${use_ngram}" && [ -z "${ngram_file}" ]; then
            die "--token_type char needs --ngram_file (an n-gram over characters: stage 6's is over BPE) or --use_ngram false"
        fi
        required=()
        ;;
    *) die "--token_type must be bpe or char, got '${token_type}'" ;;
esac
token_opts+=(--token_list "${token_list}" --non_linguistic_symbols none --cleaner none --g2p none)
if [ ${stage} -le 4 ] && [ ${stop_stage} -ge 1 ]; then
    for f in "${data_feats}/${train_set}/wav.scp" "${data_feats}/${valid_set}/wav.scp" "${required[@]}"; do
        [ -s "${f}" ] || die "${f} is missing: run stages 1-5 of the recipe first (and --nbpe as there)"
    done
    if [ "${token_type}" = char ] && [ ! -s "${token_list}" ]; then
        log "Character token list from ${data_feats}/${train_set}/text -> ${token_list}"
        mkdir -p "$(dirname "${token_list}")"
        ${python} -m espnet2.bin.tokenize_text --token_type char --input "${data_feats}/${train_set}/text" \
            --output "${token_list}.tmp" --field 2- --cleaner none --g2p none --write_vocabulary true \
            --add_symbol "<blank>:0" --add_symbol "<unk>:1" --add_symbol "<sos/eos>:-1"
        mv "${token_list}.tmp" "${token_list}"
    fi
fi
# the pretrained models: "<model> <layer>" per line
pretrained=()
for model in ${models}; do
    if [ -n "${ssl_tag}" ] && [ ! -d "$(ssl_it1_exp "${model}")" ]; then
        log "$(ssl_it1_exp "${model}") does not exist: stage 11 pretrained no ${ssl_tag} variant of ${model}; skipped"
        continue
    fi
    for layer in $(layers_of "${model}"); do
        pretrained+=("${model} ${layer}")
    done
done
[ ${#pretrained[@]} -gt 0 ] || die "no pretrained model to use (--models '${models}', --ssl_tag '${ssl_tag}')"

subset_dir() {
    # subset_dir SET N: the data dir of SET, or of N of its utterances evenly spaced (N = 0: all)
    local src=${data_feats}/$1 n=$2 sub f
    if [ "${n}" -eq 0 ] || [ "${n}" -ge "$(wc -l <"${src}/wav.scp")" ]; then
        echo "${src}"
        return 0
    fi
    sub=${expdir}/downstream_data/$1_${n}
    if [ ! -s "${sub}/utt2num_samples" ] || [ "${src}/wav.scp" -nt "${sub}/utt2num_samples" ]; then
        mkdir -p "${sub}"
        evenly_spaced "${n}" "${src}/wav.scp" | cut -d' ' -f1 >"${sub}/keys"
        for f in wav.scp text utt2num_samples; do
            awk 'NR == FNR { keep[$1] = 1; next } ($1 in keep)' "${sub}/keys" "${src}/${f}" >"${sub}/${f}.tmp"
            mv "${sub}/${f}.tmp" "${sub}/${f}"
        done
    fi
    echo "${sub}"
}
# validation data: all of valid_set, or valid_utts of them evenly spaced
valid_dir=${data_feats}/${valid_set}
if [ ${stage} -le 3 ] && [ ${stop_stage} -ge 1 ]; then
    valid_dir=$(subset_dir "${valid_set}" "${valid_utts}")
fi

train_asr() {
    # train_asr EXP_DIR CONFIG SIGNATURE INFERENCE_MODEL OPTION...
    local exp=$1 config=$2 sig=$3 inference_model=$4
    shift 4
    is_trained "${exp}" "${sig}" "${inference_model}" && return 0
    start_training "${exp}" "${sig}"
    train_espnet "${exp}" "${sig}" "${inference_model}" "${asr_train_module}" \
        --use_preprocessor true "${token_opts[@]}" \
        --train_data_path_and_name_and_type "${data_feats}/${train_set}/wav.scp,speech,sound" \
        --train_data_path_and_name_and_type "${data_feats}/${train_set}/text,text,text" \
        --valid_data_path_and_name_and_type "${valid_dir}/wav.scp,speech,sound" \
        --valid_data_path_and_name_and_type "${valid_dir}/text,text,text" \
        --train_shape_file "${data_feats}/${train_set}/utt2num_samples" \
        --valid_shape_file "${valid_dir}/utt2num_samples" \
        --resume true --output_dir "${exp}" --config "${config}" "$@"
}

decode() {
    # decode EXP_DIR MODEL_FILE CONFIG DECODE_DIR OPTION...: all test sets (test_utts of each) in one pass
    local exp=$1 model_file=$2 config=$3 decode_dir=$4
    shift 4
    local dset sig data=() wavs=()
    for dset in ${test_sets}; do
        data+=("${dset}=$(subset_dir "${dset}" "${test_utts}")")
        wavs+=("${data[-1]#*=}/wav.scp")
    done
    sig="model=$(sig_of "${exp}/.done") config=$(sig_of "${config}") opts=$* args=${inference_args} data=$(sig_of "${wavs[@]}")"
    decode_sets "${exp}" "${model_file}" "${config}" "${decode_dir}" "${sig}" "${data[@]}" -- "$@"
}

ft_exp() { echo "${expdir}/ft_$(it2_tag "$1" "$2")${exp_suffix}"; }
conformer_exp() { echo "${expdir}/s3prl_conformer_$(it2_tag "$1" "$2")${exp_suffix}"; }
check_pretrained() {
    local exp
    exp=$(ssl_it2_exp "$1" "$2")
    if [ ! -f "${exp}/.done" ] || [ ! -e "${exp}/${ssl_model}" ]; then
        die "${exp}/${ssl_model} is missing: run stage 11 (local/ssl.sh) with the same models and layers"
    fi
}
data_sig() {
    echo "train=$(sig_of "${data_feats}/${train_set}/wav.scp" "${data_feats}/${train_set}/text") valid=$(sig_of "${valid_dir}/wav.scp") tokens=$(sig_of "${token_list}")"
}

finetune() {
    # finetune "MODEL LAYER": step 1 for one pretrained model
    local model layer ssl config sig
    read -r model layer <<<"$1"
    check_pretrained "${model}" "${layer}"
    ssl=$(ssl_it2_exp "${model}" "${layer}")
    log "Step 1: CTC fine-tuning of ${ssl}/${ssl_model}"
    config=${conf_dir}/finetune_ctc.yaml
    sig="config=$(sig_of "${config}") pretrained=$(sig_of "${ssl}/.done") $(data_sig) args=${finetune_args}"
    train_asr "$(ft_exp "${model}" "${layer}")" "${config}" "${sig}" "${inference_ft_model}" \
        --encoder_conf "ssl_model=${ssl}/${ssl_model}" --encoder_conf "ssl_config=${ssl}/config.yaml" \
        ${finetune_args}
}

decode_finetuned() {
    # decode_finetuned "MODEL LAYER LM": step 2 for one fine-tuned model, without an LM
    # (LM none) or with the n-gram (LM ngram)
    local model layer lm exp name=decode_ctc lm_opts=()
    read -r model layer lm <<<"$1"
    exp=$(ft_exp "${model}" "${layer}")
    [ -f "${exp}/.done" ] || die "${exp} is not trained: run step 1 first"
    if [ "${lm}" = ngram ]; then
        name=decode_ctc_ngram lm_opts=("${ngram_opts[@]}")
        log "Step 2: decoding ${exp} with ${ngram_file}"
    else
        log "Step 2: decoding ${exp} without an LM"
    fi
    decode "${exp}" "${exp}/${inference_ft_model}" "${conf_dir}/decode_ctc.yaml" \
        "${exp}/${name}_$(model_tag "${inference_ft_model}")" "${beam_opts[@]}" "${lm_opts[@]}"
}

train_conformer() {
    # train_conformer "MODEL LAYER": step 3 for one pretrained model
    local model layer ssl config sig
    read -r model layer <<<"$1"
    check_pretrained "${model}" "${layer}"
    ssl=$(ssl_it2_exp "${model}" "${layer}")
    log "Step 3: frozen upstream $(upstream_of "${model}") (${ssl}/${ssl_model}) + Conformer"
    config=${conf_dir}/conformer_s3prl.yaml
    sig="config=$(sig_of "${config}") pretrained=$(sig_of "${ssl}/.done") $(data_sig) args=${conformer_args}"
    train_asr "$(conformer_exp "${model}" "${layer}")" "${config}" "${sig}" "${inference_conformer_model}" \
        --frontend_conf "frontend_conf.upstream=$(upstream_of "${model}")" \
        --frontend_conf "frontend_conf.path_or_url=${ssl}/${ssl_model}" \
        ${conformer_args}
}

decode_conformer() {
    # decode_conformer "MODEL LAYER": step 4 for one Conformer model
    local model layer exp
    read -r model layer <<<"$1"
    exp=$(conformer_exp "${model}" "${layer}")
    [ -f "${exp}/.done" ] || die "${exp} is not trained: run step 3 first"
    log "Step 4: decoding ${exp}"
    decode "${exp}" "${exp}/${inference_conformer_model}" "${conf_dir}/decode_conformer.yaml" \
        "${exp}/decode_conformer_$(model_tag "${inference_conformer_model}")"
}

# ---------------------------------------------------------------------------
if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ]; then
    for_each "${model_jobs}" finetune "${pretrained[@]}"
fi

if [ ${stage} -le 4 ] && [ ${stop_stage} -ge 2 ]; then
    # the evaluation subsets, before decodings that may run at once read them
    for dset in ${test_sets}; do subset_dir "${dset}" "${test_utts}" >/dev/null; done
fi

if [ ${stage} -le 2 ] && [ ${stop_stage} -ge 2 ]; then
    beam_opts=()
    [ -n "${ft_beam_size}" ] && beam_opts=(--beam_size "${ft_beam_size}")
    ngram_opts=(--ngram_file "${ngram_file}")
    [ -n "${ngram_weight}" ] && ngram_opts+=(--ngram_weight "${ngram_weight}")
    if "${use_ngram}" && [ ! -s "${ngram_file}" ]; then
        die "${ngram_file} is missing: run stage 6 of the recipe (or --use_ngram false)"
    fi
    decodings=()
    for entry in "${pretrained[@]}"; do
        decodings+=("${entry} none")
        if "${use_ngram}"; then decodings+=("${entry} ngram"); fi
    done
    for_each "${model_jobs}" decode_finetuned "${decodings[@]}"
fi

if [ ${stage} -le 3 ] && [ ${stop_stage} -ge 3 ]; then
    for_each "${model_jobs}" train_conformer "${pretrained[@]}"
fi

if [ ${stage} -le 4 ] && [ ${stop_stage} -ge 4 ]; then
    for_each "${model_jobs}" decode_conformer "${pretrained[@]}"
fi

if [ ${stage} -le 5 ] && [ ${stop_stage} -ge 5 ]; then
    log "Step 5: scoring and the Table II section of ${results}"
    for entry in "${pretrained[@]}"; do
        read -r model layer <<<"${entry}"
        for exp in "$(ft_exp "${model}" "${layer}")" "$(conformer_exp "${model}" "${layer}")"; do
            for decode_dir in "${exp}"/decode_*; do
                [ -d "${decode_dir}" ] || continue
                for dset in ${test_sets}; do
                    out=${decode_dir}/${dset}
                    { [ -f "${out}/.done" ] && [ -f "${out}/ref" ]; } || continue
                    ${python} utils/score_wer.py "${out}/ref" "${out}/text" "${out}/score_wer" >/dev/null
                    log "${out}: $(grep '^%WER' "${out}/score_wer/result.txt")"
                done
            done
        done
    done
    ${python} local/make_table2.py --exp_dir "${expdir}" --test_sets "${test_sets}" --out "${results}"
    log "Results: ${results} (section 'Table II')"
fi

log "Successfully finished. [elapsed=${SECONDS}s]"
