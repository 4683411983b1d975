#!/usr/bin/env bash
# Stage 11 of the recipe: HuBERT-style pretraining through ESPnet's SSL task
# (python -m espnet_mamba.bin.ssl_train: wav2vec CNN frontend, masking, HuBERT loss)
# of Mamba-HuBERT (ConBiMamba encoder) and of the Transformer HuBERT baseline.
#
#   step 1  k-means of MFCCs -> iteration-1 labels
#   step 2  iteration-1 pretraining of each model          exp/ssl_<model>_it1
#   step 3  k-means of layer L of each iteration-1 model -> iteration-2 labels
#   step 4  iteration-2 pretraining, one model per layer   exp/ssl_<model>_it2_L<L>
#
# Mamba-HuBERT takes its iteration-2 targets from each layer of --hubert_label_layer
# (the paper: 6 and 9, two models); the baseline from --baseline_label_layer.
# Reads dump/raw/<set>/wav.scp as stages 3-4 leave it; labels go to dump/ssl/.
# Each step skips work that is complete for the same inputs and options (a .done
# file holding them) and an interrupted training resumes (--resume true).
#
# Example (mini corpus, as stage 11 runs it):
#   local/ssl.sh --conf_dir conf/ssl/mini --train_utts 400 --valid_utts 40
# The ablation without the convolutional positional embedding, beside the paper layout
# (exp/ssl_mamba_hubert_nopos_it*; stage 12 takes the same --ssl_tag):
#   local/ssl.sh --ssl_tag nopos   (conf/ssl/tuning/mamba_hubert_it{1,2}_nopos.yaml; HuBERT has none)
. utils/common.sh  # set -Eeuo pipefail, log, die, recipe_init and the shared helpers

## General
stage=1                 # first step (1 MFCC labels, 2 iteration 1, 3 layer labels, 4 iteration 2)
stop_stage=4            # last step
ngpu=0                  # GPUs for training (0: CPU)
train_threads=1         # CPU threads of a training process (OMP_NUM_THREADS; more threads than free cores slow it down a lot)
python=python3          # python of the virtual environment (path.sh puts it first)
dumpdir=dump            # dumped audio (dump/raw/<set>) and the labels (dump/ssl)
expdir=exp              # experiments
## Data
train_set=train_clean_100 # pretraining set (dumped by stages 3-4)
valid_set=dev           # validation set
train_utts=0            # pretrain on this many training utterances, evenly spaced (0: all)
valid_utts=0            # validate on this many validation utterances, evenly spaced (0: all)
## Models
models="mamba_hubert hubert" # mamba_hubert (ConBiMamba) and/or hubert (Transformer baseline)
conf_dir=conf/ssl       # configs <model>_it1.yaml and <model>_it2.yaml, or <model>.yaml for both
ssl_tag=""              # a variant: configs <model>_it<N>_<tag>.yaml (or <model>_<tag>.yaml), experiments exp/ssl_<model>_<tag>_it<N>
hubert_label_layer="6 9" # Mamba-HuBERT layer(s) whose k-means give iteration-2 targets (one model each)
baseline_label_layer=6  # Transformer HuBERT layer whose k-means give its iteration-2 targets
ssl_model=latest.pth    # checkpoint of an iteration that labels the next one (and goes downstream)
ssl_args=""             # extra options of ssl_train (override the configs)
ssl_train_module=espnet_mamba.bin.ssl_train # python -m module for training
model_jobs=1            # pretrainings (steps 2, 4) and layer k-means (step 3) run at once, one process each
## K-means
n_clusters_it1=100      # clusters of the MFCC k-means (iteration-1 targets)
n_clusters_it2=500      # clusters of the layer k-means (iteration-2 targets)
kmeans_portion=1.0      # fraction of the pretraining utterances k-means is fit on
kmeans_max_frames=1000000 # at most this many frames to fit on
kmeans_n_init=20        # k-means initialisations (the best one is kept)
kmeans_device=cpu       # device of the iteration-1 model when extracting layer features

help_message="Usage: $0 [options]   (run from the recipe directory; stage 11 of mamba_mi.sh)"
recipe_init "$@"

config_of() {
    # config_of MODEL ITERATION: the training config of one pretraining
    find_config "$1" "$2" || die "no config for $1 iteration $2: none of $(config_candidates "$1" "$2") (--conf_dir, --ssl_tag)"
}
config_candidates() {
    # config_candidates MODEL ITERATION: where its config may be (a variant also in conf_dir/tuning)
    local dir suffix=${ssl_tag:+_${ssl_tag}}
    for dir in "${conf_dir}" ${ssl_tag:+"${conf_dir}/tuning"}; do
        echo "${dir}/$1_it$2${suffix}.yaml ${dir}/$1${suffix}.yaml"
    done
}
find_config() {
    # find_config MODEL ITERATION: the first config of config_candidates that exists
    local f
    for f in $(config_candidates "$1" "$2"); do
        [ -f "${f}" ] && { echo "${f}"; return 0; }
    done
    return 1
}
subset() {
    # subset SRC DST N: DST/wav.scp = N utterances of SRC/wav.scp, evenly spaced (N = 0: all)
    mkdir -p "$2"
    evenly_spaced "$3" "$1/wav.scp" >"$2/wav.scp.tmp"
    mv "$2/wav.scp.tmp" "$2/wav.scp"
}

# ---------------------------------------------------------------------------
# Checks
require_int 1 n_clusters_it1 n_clusters_it2 train_threads kmeans_max_frames kmeans_n_init model_jobs
require_int 0 train_utts valid_utts ngpu
require_stages 4
if [ "${n_clusters_it1}" -lt 2 ] || [ "${n_clusters_it2}" -lt 2 ]; then
    die "--n_clusters_it1 and --n_clusters_it2 must be at least 2"
fi
for layer in ${hubert_label_layer} ${baseline_label_layer}; do
    if [[ ! ${layer} =~ ^[0-9]+$ ]]; then
        die "label layers must be non-negative integers, got '${layer}' (--hubert_label_layer '${hubert_label_layer}', --baseline_label_layer '${baseline_label_layer}')"
    fi
done
[ -n "${models}" ] || die "--models is empty"
require_ssl_tag
variant_models=()
for model in ${models}; do
    case "${model}" in
        mamba_hubert | hubert) ;;
        *) die "--models: unknown model '${model}' (mamba_hubert or hubert)" ;;
    esac
    if [ -n "${ssl_tag}" ] && ! find_config "${model}" 1 >/dev/null; then
        log "no ${ssl_tag} variant of ${model} (none of $(config_candidates "${model}" 1)); skipped"
        continue
    fi
    config_of "${model}" 1 >/dev/null && config_of "${model}" 2 >/dev/null
    variant_models+=("${model}")
done
[ ${#variant_models[@]} -gt 0 ] || die "no model has a config of variant '${ssl_tag}' in ${conf_dir} (--ssl_tag, --conf_dir)"
models="${variant_models[*]}"
for dset in "${train_set}" "${valid_set}"; do
    [ -s "${dumpdir}/raw/${dset}/wav.scp" ] || die "${dumpdir}/raw/${dset}/wav.scp is missing: run stages 1-4 of the recipe first"
done

ssl_data=${dumpdir}/ssl/data
labels_it1=${dumpdir}/ssl/it1_mfcc_km${n_clusters_it1}
labels_it2() { echo "${dumpdir}/ssl/it2_$(ssl_name "$1")_L$2_km${n_clusters_it2}"; }

pretrain() {
    # pretrain CONFIG LABEL_DIR EXP_DIR
    local config=$1 labels=$2 exp=$3 sig
    sig="config=$(sig_of "${config}") labels=$(sig_of "${labels}/.done") args=${ssl_args}"
    is_trained "${exp}" "${sig}" "${ssl_model}" && return 0
    start_training "${exp}" "${sig}"
    ${python} local/hubert_config.py "${config}" "${labels}/tokens.txt" "${exp}/pretrain_config.yaml"
    log "Pretraining ${exp} on ${labels} ($(($(wc -l <"${labels}/tokens.txt") - 1)) clusters)"
    train_espnet "${exp}" "${sig}" "${ssl_model}" "${ssl_train_module}" \
        --use_preprocessor true --token_type word --token_list "${labels}/tokens.txt" \
        --train_data_path_and_name_and_type "${ssl_data}/train/wav.scp,speech,sound" \
        --train_data_path_and_name_and_type "${labels}/train/text,text,text" \
        --valid_data_path_and_name_and_type "${ssl_data}/valid/wav.scp,speech,sound" \
        --valid_data_path_and_name_and_type "${labels}/valid/text,text,text" \
        --train_shape_file "${labels}/train/speech_shape" --valid_shape_file "${labels}/valid/speech_shape" \
        --resume true --output_dir "${exp}" --config "${exp}/pretrain_config.yaml" ${ssl_args}
}

pretrain_it1() {
    # pretrain_it1 MODEL: step 2 for one model
    log "Step 2: iteration 1 of $1"
    pretrain "$(config_of "$1" 1)" "${labels_it1}" "$(ssl_it1_exp "$1")"
}

kmeans_it2() {
    # kmeans_it2 MODEL: step 3 for one model, the k-means of each of its label layers
    local model=$1 it1 layers sig layer pending=() out_template kmeans_log
    it1=$(ssl_it1_exp "${model}")
    [ -f "${it1}/.done" ] || die "${it1} is not trained: run step 2 first"
    layers=$(layers_of "${model}")
    log "Step 3: k-means (${n_clusters_it2} clusters) of layer(s) ${layers} of ${it1}/${ssl_model}"
    sig="model=$(sig_of "${it1}/.done") data=$(sig_of "${ssl_data}/train/wav.scp" "${ssl_data}/valid/wav.scp") k=${n_clusters_it2} portion=${kmeans_portion} max_frames=${kmeans_max_frames} n_init=${kmeans_n_init}"
    for layer in ${layers}; do
        if is_done "$(labels_it2 "${model}" "${layer}")" "${sig} layer=${layer}"; then
            log "$(labels_it2 "${model}" "${layer}"): complete (.done); skipping"
        else
            pending+=("${layer}")
        fi
    done
    [ ${#pending[@]} -eq 0 ] && return 0
    out_template=${dumpdir}/ssl/it2_$(ssl_name "${model}")_L{layer}_km${n_clusters_it2}
    kmeans_log=${dumpdir}/ssl/it2_$(ssl_name "${model}")_kmeans.log
    ${python} -m espnet_mamba.bin.kmeans --feature ssl --ssl_model "${it1}/${ssl_model}" \
        --layers "${pending[@]}" --n_clusters "${n_clusters_it2}" --device "${kmeans_device}" \
        --fit_data_dir "${ssl_data}/train" --data_dirs "${ssl_data}/train" "${ssl_data}/valid" \
        --out_dir "${out_template}" --portion "${kmeans_portion}" --max_fit_frames "${kmeans_max_frames}" \
        --n_init "${kmeans_n_init}" >"${kmeans_log}" 2>&1 \
        || die "k-means of ${model} layer(s) ${pending[*]} failed; see ${kmeans_log}:\n$(tail -n 3 "${kmeans_log}")"
    for layer in "${pending[@]}"; do
        mark_done "$(labels_it2 "${model}" "${layer}")" "${sig} layer=${layer}"
    done
}

pretrain_it2() {
    # pretrain_it2 "MODEL LAYER": step 4 for one model and label layer
    local model layer labels
    read -r model layer <<<"$1"
    log "Step 4: iteration 2 of ${model}, targets from layer ${layer}"
    labels=$(labels_it2 "${model}" "${layer}")
    [ -f "${labels}/.done" ] || die "${labels} is missing: run step 3 first"
    pretrain "$(config_of "${model}" 2)" "${labels}" "$(ssl_it2_exp "${model}" "${layer}")"
}

# ---------------------------------------------------------------------------
if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ]; then
    log "Step 1: pretraining data (${train_utts} / ${valid_utts} utterances, 0 = all) and MFCC k-means labels -> ${labels_it1}"
    subset "${dumpdir}/raw/${train_set}" "${ssl_data}/train" "${train_utts}"
    subset "${dumpdir}/raw/${valid_set}" "${ssl_data}/valid" "${valid_utts}"
    sig="data=$(sig_of "${ssl_data}/train/wav.scp" "${ssl_data}/valid/wav.scp") k=${n_clusters_it1} portion=${kmeans_portion} max_frames=${kmeans_max_frames} n_init=${kmeans_n_init}"
    if is_done "${labels_it1}" "${sig}"; then
        log "${labels_it1}: complete (.done); skipping"
    else
        mkdir -p "${labels_it1}"
        rm -f "${labels_it1}/.done"
        ${python} -m espnet_mamba.bin.kmeans --feature mfcc --n_clusters "${n_clusters_it1}" \
            --fit_data_dir "${ssl_data}/train" --data_dirs "${ssl_data}/train" "${ssl_data}/valid" \
            --out_dir "${labels_it1}" --portion "${kmeans_portion}" --max_fit_frames "${kmeans_max_frames}" \
            --n_init "${kmeans_n_init}" >"${labels_it1}/kmeans.log" 2>&1 \
            || die "MFCC k-means failed; see ${labels_it1}/kmeans.log:\n$(tail -n 3 "${labels_it1}/kmeans.log")"
        mark_done "${labels_it1}" "${sig}"
    fi
fi

if [ ${stage} -le 2 ] && [ ${stop_stage} -ge 2 ]; then
    for_each "${model_jobs}" pretrain_it1 ${models}
fi

if [ ${stage} -le 3 ] && [ ${stop_stage} -ge 3 ]; then
    for_each "${model_jobs}" kmeans_it2 ${models}
fi

if [ ${stage} -le 4 ] && [ ${stop_stage} -ge 4 ]; then
    it2_models=()
    for model in ${models}; do
        for layer in $(layers_of "${model}"); do it2_models+=("${model} ${layer}"); done
    done
    for_each "${model_jobs}" pretrain_it2 "${it2_models[@]}"
fi

log "Successfully finished. [elapsed=${SECONDS}s]"
