#!/usr/bin/env bash
# Stages of the mamba-mi ASR recipe (ConBiMamba encoder, with or without an
# attention decoder), in the style of ESPnet's egs2/TEMPLATE/asr1/asr.sh.
#
#   1 data  2 speed perturbation  3 dump audio  4 filter by duration  5 BPE tokens
#   6 n-gram LM (+ neural LM with --use_lm)  7 feature statistics  8 training
#   9 decoding  10 scoring + RESULTS.md  (11-13: SSL pretraining, downstream, MI)
#
# Every stage skips work that is complete for the same options (a .done file
# holding the options, written last), writes its outputs atomically, and can be
# resumed after a failure or a kill: ./run.sh --stage N [same options].
. utils/common.sh  # set -Eeuo pipefail, log, die, recipe_init and the shared helpers
. conf/presets.sh  # mini_corpus_sizes
resume_cmd=${MAMBA_MI_RESUME:-$0$(printf ' %q' "$@")}

## General
stage=1                 # first stage to run
stop_stage=13           # last stage to run
nj=2                    # parallel jobs of data preparation, dumping and statistics
inference_nj=2          # parallel decoding jobs
ngpu=0                  # GPUs for training (0: CPU)
inference_ngpu=0        # GPUs of each decoding job (0: CPU)
train_threads=2         # CPU threads of the training process (OMP_NUM_THREADS)
python=python3          # python of the virtual environment (path.sh puts it first)
dumpdir=dump            # dumped audio
expdir=exp              # experiments
## Data
corpus=mini             # mini (synthesized, offline) or librispeech
librispeech_dir=""      # existing LibriSpeech directory; empty: download (librispeech) or synthesize (mini)
download_dir=downloads  # downloads and the synthesized corpus
download_lm_text=false  # librispeech: fetch librispeech-lm-norm.txt.gz as extra LM text
train_set=train_clean_100 # training set
valid_set=dev           # validation set (dev_clean + dev_other)
test_sets="dev_clean dev_other test_clean test_other" # evaluation sets
speed_perturb_factors="" # e.g. "0.9 1.0 1.1"; empty: no speed perturbation
min_wav_duration=0.1    # shorter training utterances are dropped (seconds)
max_wav_duration=30     # longer training utterances are dropped (seconds)
## Mini corpus
mini_preset=default     # tiny (CI, minutes) or default (sizes below when empty)
mini_seed=1             # seed of the synthesized corpus
mini_train_speakers=""  # training speakers (empty: from the preset)
mini_train_utts=""      # utterances per training speaker (empty: from the preset)
mini_eval_speakers=""   # speakers of each dev/test set (empty: from the preset)
mini_eval_utts=""       # utterances per dev/test speaker (empty: from the preset)
mini_lm_sentences=""    # sentences of extra LM text (empty: from the preset)
## Tokens
nbpe=5000               # sentencepiece vocabulary size
bpemode=unigram         # sentencepiece model type (unigram or bpe)
bpe_train_text=""       # text to train sentencepiece on (empty: the training transcripts)
## Language models
use_ngram=false         # decode with the token-level n-gram LM of stage 6
ngram_num=4             # n-gram order
ngram_weight=""         # n-gram weight in decoding (empty: the inference config's)
lm_train_text=""        # LM text (empty: training transcripts + data/local/other_text/text)
use_lm=false            # train a neural LM in stage 6 and decode with it
lm_config=""            # neural LM config (needed with --use_lm true)
lm_args=""              # extra options of lm_train
## ASR
use_decoder=true        # true: CTC + attention decoder ("+ Decoder"); false: CTC only ("- Decoder")
asr_config=""           # training config (run.sh picks it from --corpus, --mini_preset, --use_decoder)
inference_config=""     # decoding config
asr_tag=""              # experiment name suffix (empty: from the config name)
asr_args=""             # extra options of asr_train
inference_args=""       # extra options of asr_inference
inference_asr_model=""  # checkpoint to decode (empty: the average by the config's best_model_criterion)
asr_train_module=espnet_mamba.bin.asr_train # python -m module for training
asr_inference_module=espnet_mamba.bin.asr_inference # python -m module for decoding
lm_train_module=espnet_mamba.bin.lm_train # python -m module for LM training
results=RESULTS.md      # stage 10 writes the result tables here
## Pretraining, downstream ASR and the MI analysis (stages 11-13)
hubert_label_layer="6 9" # Mamba-HuBERT layer(s) whose k-means give iteration-2 targets (one model each)
ssl_tag=""              # a pretraining variant for stages 11-12, e.g. nopos (configs <model>_it<N>_<tag>.yaml)
ssl_opts=""             # extra options of local/ssl.sh (stage 11; run.sh sets the corpus's)
ssamba_opts=""          # options of local/ssamba.sh (stage 11; empty: no SSAMBA)
downstream_opts=""      # extra options of local/downstream.sh (stage 12; run.sh sets the corpus's)
mi_n_utts=1000          # utterances per model in the MI analysis (stage 13)
mi_args=""              # extra options of analysis/run_mine.py (stage 13)

help_message="Usage: $0 [options]   (run from the recipe directory; see run.sh)
  e.g. $0 --stage 1 --stop_stage 10 --use_decoder false"

recipe_init "$@"

current_stage=0
current_log=""
failed_line=""
on_exit() {
    local rc=$?
    # stage 0: the checks of the options, which say what is wrong themselves
    { [ "${rc}" -eq 0 ] || [ "${current_stage}" -eq 0 ]; } && return "${rc}"
    error "stage ${current_stage} failed (exit code ${rc}${failed_line:+, mamba_mi.sh line ${failed_line}})."
    [ -n "${current_log}" ] && error "See the log: ${current_log}"
    error "After fixing the problem, resume with: ${resume_cmd} --stage ${current_stage}"
    return "${rc}"
}
trap 'failed_line=${LINENO}' ERR
trap on_exit EXIT

begin_stage() {
    current_stage=$1
    current_log=""
    stage_start=${SECONDS}
    log "Stage $1: $2"
}
end_stage() {
    log "Stage ${current_stage}: done [$((SECONDS - stage_start))s]"
}

# ---------------------------------------------------------------------------
# Checks and derived settings (parse_options.sh already keeps the true/false
# options true or false)
require_int 1 nj inference_nj nbpe ngram_num train_threads
require_int 0 ngpu inference_ngpu
require_stages 13
require_number min_wav_duration max_wav_duration
check_preset_names "${corpus}" "${mini_preset}"
mini_corpus_sizes "${mini_preset}"
require_int 1 mini_train_speakers mini_train_utts mini_eval_speakers mini_eval_utts
require_int 0 mini_lm_sentences
if [ "${corpus}" = mini ] && [ -n "${librispeech_dir}" ]; then
    die "--librispeech_dir is for --corpus librispeech (the mini corpus is synthesized)"
fi
case "${bpemode}" in
    unigram | bpe) ;;
    *) die "--bpemode must be unigram or bpe, got '${bpemode}'" ;;
esac
for factor in ${speed_perturb_factors}; do
    [[ ${factor} =~ ^[0-9]*\.?[0-9]+$ ]] && [[ ! ${factor} =~ ^[0.]+$ ]] \
        || die "--speed_perturb_factors must hold positive numbers, got '${factor}'"
done
for layer in ${hubert_label_layer}; do
    [[ ${layer} =~ ^[0-9]+$ ]] || die "--hubert_label_layer must hold layer numbers, got '${layer}'"
done
# the sets stage 1 makes; any other set must be a data dir of the user's
for name in train_set valid_set test_sets; do
    [ -n "${!name// /}" ] || die "--${name} is empty"
    for dset in ${!name}; do
        case " train_clean_100 dev_clean dev_other test_clean test_other dev " in
            *" ${dset} "*) ;;
            *) [ -s "data/${dset}/wav.scp" ] || die "--${name}: unknown set ${dset} (stage 1 makes train_clean_100, dev, dev_clean, dev_other, test_clean and test_other; data/${dset}/wav.scp does not exist)" ;;
        esac
    done
done
for name in bpe_train_text lm_train_text; do
    for file in ${!name}; do
        [ -f "${file}" ] || die "--${name} ${file}: no such file"
    done
done
if [ ${stage} -le 10 ] && [ ${stop_stage} -ge 7 ]; then
    for name in asr_config inference_config; do
        if [ -z "${!name}" ] || [ ! -f "${!name}" ]; then
            die "--${name} '${!name}': no such file (run.sh sets it from --corpus/--mini_preset/--use_decoder)"
        fi
    done
fi
if "${use_lm}" && [ ${stop_stage} -ge 6 ] && { [ -z "${lm_config}" ] || [ ! -f "${lm_config}" ]; }; then
    die "--use_lm true needs --lm_config FILE, got '${lm_config}'"
fi

# The entry points of espnet_mamba register our encoder; fall back to ESPnet's own
# (without the conbimamba encoder) only if they are missing.
for var in asr_train_module asr_inference_module lm_train_module; do
    module=${!var}
    if [ ${stage} -le 9 ] && [ ${stop_stage} -ge 6 ] && [[ ${module} == espnet_mamba.* ]] \
        && ! ${python} local/has_module.py "${module}" 2>/dev/null; then
        fallback=espnet2.bin.${module##*.}
        log "Warning: ${module} not found; using ${fallback} (the conbimamba encoder is not available there)"
        printf -v "${var}" '%s' "${fallback}"
    fi
done

orig_train_set=${train_set}
if [ -n "${speed_perturb_factors}" ]; then
    train_set=${train_set}_sp
fi
data_feats=${dumpdir}/raw
token_dir=data/token_list/bpe_${bpemode}${nbpe}
bpemodel=${token_dir}/bpe.model
token_list=${token_dir}/tokens.txt
asr_stats_dir=${expdir}/asr_stats_raw_en_bpe${nbpe}
if [ -z "${asr_tag}" ]; then
    asr_tag=$(basename "${asr_config:-none}" .yaml)
    if ! "${use_decoder}" && [[ ${asr_tag} != *nodec* ]]; then
        asr_tag+=_nodec
    fi
fi
asr_exp=${expdir}/asr_${asr_tag}
if [ -z "${inference_asr_model}" ] && [ -f "${asr_config}" ]; then
    # the average of the best checkpoints by the config's first criterion, as ESPnet names it
    inference_asr_model=$(${python} local/asr_config.py checkpoint "${asr_config}")
fi
ngram_exp=${expdir}/ngram
lm_exp=${expdir}/lm_$(basename "${lm_config:-none}" .yaml)_bpe${nbpe}
inference_tag=$(basename "${inference_config:-none}" .yaml)
inference_tag=${inference_tag#decode_}
"${use_ngram}" && inference_tag+=_ngram${ngram_num}${ngram_weight:+w${ngram_weight}}
"${use_lm}" && inference_tag+=_$(basename "${lm_exp}")
inference_tag+=_asr_model_$(echo "${inference_asr_model}" | sed -e "s/\//_/g" -e "s/\.[^.]*$//g")
token_opts=(--token_type bpe --bpemodel "${bpemodel}" --token_list "${token_list}"
    --non_linguistic_symbols none --cleaner none --g2p none)

# ---------------------------------------------------------------------------
if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ]; then
    begin_stage 1 "Data preparation: ${corpus} -> data/"
    if [ "${corpus}" = mini ]; then
        sig="corpus=mini seed=${mini_seed} sizes=${mini_train_speakers}x${mini_train_utts},${mini_eval_speakers}x${mini_eval_utts},lm${mini_lm_sentences} dir=${librispeech_dir}"
    else
        sig="corpus=librispeech dir=${librispeech_dir:-${download_dir}} lm_text=${download_lm_text}"
    fi
    outputs_ok=true
    for dset in ${orig_train_set} ${valid_set} ${test_sets}; do
        [ -s "data/${dset}/wav.scp" ] || outputs_ok=false
    done
    if "${outputs_ok}" && is_done data "${sig}"; then
        log "Stage 1: data/ is complete for these options (data/.done); skipping"
    else
        mkdir -p data
        rm -f data/.done
        current_log="(the output above)"
        local/data.sh --python "${python}" --corpus "${corpus}" --librispeech_dir "${librispeech_dir}" \
            --download_dir "${download_dir}" --download_lm_text "${download_lm_text}" --nj "${nj}" \
            --mini_seed "${mini_seed}" --mini_train_speakers "${mini_train_speakers}" \
            --mini_train_utts "${mini_train_utts}" --mini_eval_speakers "${mini_eval_speakers}" \
            --mini_eval_utts "${mini_eval_utts}" --mini_lm_sentences "${mini_lm_sentences}"
        mark_done data "${sig}"
    fi
    end_stage
fi

if [ ${stage} -le 2 ] && [ ${stop_stage} -ge 2 ]; then
    begin_stage 2 "Speed perturbation: factors '${speed_perturb_factors}'"
    [ -z "${speed_perturb_factors}" ] || require_files "run stage 1 first" data/.done "data/${orig_train_set}/wav.scp"
    if [ -z "${speed_perturb_factors}" ]; then
        log "Stage 2: no --speed_perturb_factors; skipping"
    elif sig="factors=${speed_perturb_factors} from=$(cat data/.done)" && is_done "data/${train_set}" "${sig}"; then
        log "Stage 2: data/${train_set} is complete (.done); skipping"
    else
        parts=()
        for factor in ${speed_perturb_factors}; do
            ${python} utils/data_dir.py speed "data/${orig_train_set}" "data/${orig_train_set}_sp${factor}" --factor "${factor}"
            parts+=("data/${orig_train_set}_sp${factor}")
        done
        ${python} utils/data_dir.py combine "data/${train_set}" "${parts[@]}"
        rm -rf "${parts[@]}"
        mark_done "data/${train_set}" "${sig}"
    fi
    end_stage
fi

if [ ${stage} -le 3 ] && [ ${stop_stage} -ge 3 ]; then
    begin_stage 3 "Dump audio (16 kHz flac): data/ -> ${data_feats}/"
    for dset in ${train_set} ${valid_set} ${test_sets}; do
        if [ "${dset}" = "${train_set}" ] && [ -n "${speed_perturb_factors}" ]; then hint="run stage 2 first"; else hint="run stage 1 first"; fi
        require_files "${hint}" "data/${dset}/wav.scp" "data/${dset}/text"
    done
    for dset in ${train_set} ${valid_set} ${test_sets}; do
        if [ "${dset}" = "${train_set}" ] || [ "${dset}" = "${valid_set}" ]; then
            out=${data_feats}/org/${dset}
        else
            out=${data_feats}/${dset}
        fi
        sig="from=$(sig_of "data/${dset}/wav.scp")$(sig_of "data/${dset}/text")"
        if is_done "${out}" "${sig}"; then
            log "${out}: complete (.done); skipping"
            continue
        fi
        mkdir -p "${out}/logs" "${out}/split"
        rm -f "${out}/.done"
        _nj=$(min "${nj}" "$(wc -l <"data/${dset}/wav.scp")")
        ${python} utils/split_scp.py --num_parts "${_nj}" "data/${dset}/wav.scp" "${out}/split/wav.JOB.scp"
        current_log=${out}/logs/dump.*.log
        log "Dumping ${dset} (${_nj} jobs; log ${out}/logs/dump.JOB.log)"
        ${train_cmd} JOB=1:"${_nj}" "${out}/logs/dump.JOB.log" \
            ${python} utils/dump_audio.py "${out}/split/wav.JOB.scp" "${out}/data/format.JOB" \
            "${out}/split/wav.JOB.out" "${out}/split/num_samples.JOB"
        for i in $(seq "${_nj}"); do cat "${out}/split/wav.${i}.out"; done | sort >"${out}/wav.scp.tmp"
        for i in $(seq "${_nj}"); do cat "${out}/split/num_samples.${i}"; done | sort >"${out}/utt2num_samples.tmp"
        mv "${out}/wav.scp.tmp" "${out}/wav.scp"
        mv "${out}/utt2num_samples.tmp" "${out}/utt2num_samples"
        for f in text utt2spk spk2utt; do cp "data/${dset}/${f}" "${out}/${f}"; done
        echo raw >"${out}/feats_type"
        current_log="(the output above)"
        # dump_audio.py has decoded and checked every file: check the text files only
        ${python} utils/validate_data_dir.py --no_audio "${out}"
        mark_done "${out}" "${sig}"
    done
    end_stage
fi

if [ ${stage} -le 4 ] && [ ${stop_stage} -ge 4 ]; then
    begin_stage 4 "Remove utterances shorter than ${min_wav_duration}s or longer than ${max_wav_duration}s"
    require_files "run stage 3 first" "${data_feats}/org/${train_set}/.done" "${data_feats}/org/${valid_set}/.done"
    for dset in ${train_set} ${valid_set}; do
        src=${data_feats}/org/${dset}
        out=${data_feats}/${dset}
        sig="min=${min_wav_duration} max=${max_wav_duration} from=$(cat "${src}/.done")"
        if is_done "${out}" "${sig}"; then
            log "${out}: complete (.done); skipping"
            continue
        fi
        min_samples=$(awk -v s="${min_wav_duration}" 'BEGIN { printf("%d", s * 16000) }')
        max_samples=$(awk -v s="${max_wav_duration}" 'BEGIN { printf("%d", s * 16000) }')
        awk -v lo="${min_samples}" -v hi="${max_samples}" '$2 >= lo && $2 <= hi { print $1 }' \
            "${src}/utt2num_samples" >"${src}/keep.tmp"
        # utterances with an empty transcript cannot train the model
        awk 'NF > 1 { print $1 }' "${src}/text" | sort | comm -12 - <(sort "${src}/keep.tmp") >"${src}/keep"
        rm -f "${src}/keep.tmp"
        ${python} utils/data_dir.py subset "${src}" "${out}" --keys "${src}/keep"
        log "${out}: kept $(wc -l <"${out}/wav.scp") of $(wc -l <"${src}/wav.scp") utterances"
        [ -s "${out}/wav.scp" ] || die "no utterance of ${src} lies within ${min_wav_duration}-${max_wav_duration}s"
        mark_done "${out}" "${sig}"
    done
    end_stage
fi

if [ ${stage} -le 5 ] && [ ${stop_stage} -ge 5 ]; then
    begin_stage 5 "sentencepiece ${bpemode} tokens (nbpe=${nbpe}) -> ${token_dir}"
    _bpe_text=${bpe_train_text:-${data_feats}/${train_set}/text}
    require_files "run stage 4 first" "${_bpe_text}"
    sig="nbpe=${nbpe} mode=${bpemode} text=$(sig_of "${_bpe_text}")"
    if is_done "${token_dir}" "${sig}"; then
        log "${token_dir}: complete (.done); skipping"
    else
        rm -rf "${token_dir}.tmp"
        mkdir -p "${token_dir}.tmp"
        # the mini corpus may hold too little text for the vocabulary size: take fewer pieces then
        hard_limit=true
        [ "${corpus}" = mini ] && hard_limit=false
        ${python} utils/train_bpe.py --vocab_size "${nbpe}" --model_type "${bpemode}" \
            --hard_vocab_limit "${hard_limit}" "${_bpe_text}" "${token_dir}.tmp/bpe"
        # the token list: <blank>, <unk>, the pieces by frequency in the text, <sos/eos>
        ${python} -m espnet2.bin.tokenize_text --token_type bpe --bpemodel "${token_dir}.tmp/bpe.model" \
            --input "${_bpe_text}" --output "${token_dir}.tmp/tokens.txt" --field 2- \
            --cleaner none --g2p none --write_vocabulary true \
            --add_symbol "<blank>:0" --add_symbol "<unk>:1" --add_symbol "<sos/eos>:-1"
        rm -rf "${token_dir}"
        mv "${token_dir}.tmp" "${token_dir}"
        mark_done "${token_dir}" "${sig}"
    fi
    log "${token_list}: $(wc -l <"${token_list}") tokens"
    end_stage
fi

if [ ${stage} -le 6 ] && [ ${stop_stage} -ge 6 ]; then
    begin_stage 6 "Language models: token-level ${ngram_num}-gram (KenLM)$("${use_lm}" && echo " and a neural LM")"
    require_files "run stage 5 first" "${token_dir}/.done"
    lm_text_files=(${lm_train_text:-${data_feats}/${train_set}/text})
    require_files "run stage 4 first" "${lm_text_files[@]}"
    if [ -z "${lm_train_text}" ] && [ -f data/local/other_text/text ]; then
        lm_text_files+=(data/local/other_text/text)
    fi
    lm_text_sig=$(sig_of "${lm_text_files[@]}")
    sig="order=${ngram_num} text=${lm_text_sig} tokens=$(cat "${token_dir}/.done")"
    if is_done "${ngram_exp}" "${sig}"; then
        log "${ngram_exp}: complete (.done); skipping"
    else
        for tool in lmplz build_binary; do
            command -v "${tool}" >/dev/null || die "${tool} not found on PATH (tools/install.sh builds it into .venv/bin)"
        done
        mkdir -p "${ngram_exp}"
        rm -f "${ngram_exp}/.done"
        cat "${lm_text_files[@]}" >"${ngram_exp}/lm_train.txt"
        ${python} -m espnet2.bin.tokenize_text --token_type bpe --bpemodel "${bpemodel}" \
            --input "${ngram_exp}/lm_train.txt" --output "${ngram_exp}/lm_train.tokens" --field 2- \
            --cleaner none --g2p none
        current_log=${ngram_exp}/lmplz.log
        # --discount_fallback: the small or synthetic texts lack the counts-of-counts
        # that Kneser-Ney discounting estimates from
        lmplz -o "${ngram_num}" -S 10% --discount_fallback <"${ngram_exp}/lm_train.tokens" \
            >"${ngram_exp}/${ngram_num}gram.arpa.tmp" 2>"${ngram_exp}/lmplz.log"
        mv "${ngram_exp}/${ngram_num}gram.arpa.tmp" "${ngram_exp}/${ngram_num}gram.arpa"
        current_log=${ngram_exp}/build_binary.log
        build_binary -s "${ngram_exp}/${ngram_num}gram.arpa" "${ngram_exp}/${ngram_num}gram.bin.tmp" \
            >"${ngram_exp}/build_binary.log" 2>&1
        mv "${ngram_exp}/${ngram_num}gram.bin.tmp" "${ngram_exp}/${ngram_num}gram.bin"
        rm -f "${ngram_exp}/lm_train.tokens"
        mark_done "${ngram_exp}" "${sig}"
        log "${ngram_exp}/${ngram_num}gram.bin: $(du -h "${ngram_exp}/${ngram_num}gram.bin" | cut -f1)"
    fi

    if "${use_lm}"; then
        lm_sig="config=$(sig_of "${lm_config}") text=${lm_text_sig} tokens=$(cat "${token_dir}/.done") args=${lm_args}"
        if is_done "${lm_exp}" "${lm_sig}"; then
            log "${lm_exp}: complete (.done); skipping"
        else
            mkdir -p "${lm_exp}/data"
            rm -f "${lm_exp}/.done"
            cat "${lm_text_files[@]}" | sort >"${lm_exp}/data/lm_train.txt"
            cp "${data_feats}/${valid_set}/text" "${lm_exp}/data/lm_valid.txt"
            current_log=${lm_exp}/stats.log
            log "Neural LM statistics (log ${current_log})"
            ${train_cmd} "${current_log}" ${python} -m "${lm_train_module}" --collect_stats true \
                --use_preprocessor true "${token_opts[@]}" \
                --train_data_path_and_name_and_type "${lm_exp}/data/lm_train.txt,text,text" \
                --valid_data_path_and_name_and_type "${lm_exp}/data/lm_valid.txt,text,text" \
                --train_shape_file "${lm_exp}/data/lm_train.txt" --valid_shape_file "${lm_exp}/data/lm_valid.txt" \
                --output_dir "${lm_exp}/stats" --config "${lm_config}" ${lm_args}
            ntok=$(wc -l <"${token_list}")
            for split in train valid; do
                awk -v N="${ntok}" '{ print $0 "," N }' "${lm_exp}/stats/${split}/text_shape" \
                    >"${lm_exp}/stats/${split}/text_shape.bpe"
            done
            current_log=${lm_exp}/train.log
            log "Neural LM training (log ${current_log})"
            OMP_NUM_THREADS=${train_threads} ${train_cmd} --gpu "${ngpu}" "${current_log}" \
                ${python} -m "${lm_train_module}" --ngpu "${ngpu}" --use_preprocessor true "${token_opts[@]}" \
                --train_data_path_and_name_and_type "${lm_exp}/data/lm_train.txt,text,text" \
                --valid_data_path_and_name_and_type "${lm_exp}/data/lm_valid.txt,text,text" \
                --train_shape_file "${lm_exp}/stats/train/text_shape.bpe" \
                --valid_shape_file "${lm_exp}/stats/valid/text_shape.bpe" \
                --fold_length 150 --resume true --output_dir "${lm_exp}" --config "${lm_config}" ${lm_args}
            mark_done "${lm_exp}" "${lm_sig}"
        fi
    fi
    end_stage
fi

if [ ${stage} -le 7 ] && [ ${stop_stage} -ge 7 ]; then
    begin_stage 7 "Feature statistics (collect_stats) -> ${asr_stats_dir}"
    require_files "run stage 4 first" "${data_feats}/${train_set}/.done" "${data_feats}/${valid_set}/.done"
    require_files "run stage 5 first" "${token_dir}/.done"
    sig="train=$(cat "${data_feats}/${train_set}/.done") valid=$(cat "${data_feats}/${valid_set}/.done") tokens=$(cat "${token_dir}/.done") frontend=$(${python} local/asr_config.py frontend "${asr_config}")"
    if is_done "${asr_stats_dir}" "${sig}"; then
        log "${asr_stats_dir}: complete (.done); skipping"
    else
        rm -rf "${asr_stats_dir}"
        logdir=${asr_stats_dir}/logdir
        mkdir -p "${logdir}"
        _nj=$(min "${nj}" "$(min "$(wc -l <"${data_feats}/${train_set}/wav.scp")" "$(wc -l <"${data_feats}/${valid_set}/wav.scp")")")
        ${python} utils/split_scp.py --num_parts "${_nj}" "${data_feats}/${train_set}/wav.scp" "${logdir}/train.JOB.scp"
        ${python} utils/split_scp.py --num_parts "${_nj}" "${data_feats}/${valid_set}/wav.scp" "${logdir}/valid.JOB.scp"
        current_log=${logdir}/stats.*.log
        log "collect_stats in ${_nj} jobs (log ${logdir}/stats.JOB.log)"
        ${train_cmd} JOB=1:"${_nj}" "${logdir}/stats.JOB.log" \
            ${python} -m "${asr_train_module}" --collect_stats true --use_preprocessor true "${token_opts[@]}" \
            --train_data_path_and_name_and_type "${data_feats}/${train_set}/wav.scp,speech,sound" \
            --train_data_path_and_name_and_type "${data_feats}/${train_set}/text,text,text" \
            --valid_data_path_and_name_and_type "${data_feats}/${valid_set}/wav.scp,speech,sound" \
            --valid_data_path_and_name_and_type "${data_feats}/${valid_set}/text,text,text" \
            --train_shape_file "${logdir}/train.JOB.scp" --valid_shape_file "${logdir}/valid.JOB.scp" \
            --output_dir "${logdir}/stats.JOB" --config "${asr_config}" --frontend_conf fs=16k ${asr_args}
        current_log="(the output above)"
        stats_dirs=()
        for i in $(seq "${_nj}"); do stats_dirs+=(--input_dir "${logdir}/stats.${i}"); done
        ${python} -m espnet2.bin.aggregate_stats_dirs "${stats_dirs[@]}" --output_dir "${asr_stats_dir}"
        ntok=$(wc -l <"${token_list}")
        for split in train valid; do
            awk -v N="${ntok}" '{ print $0 "," N }' "${asr_stats_dir}/${split}/text_shape" \
                >"${asr_stats_dir}/${split}/text_shape.bpe"
        done
        mark_done "${asr_stats_dir}" "${sig}"
    fi
    end_stage
fi

if [ ${stage} -le 8 ] && [ ${stop_stage} -ge 8 ]; then
    begin_stage 8 "ASR training ($("${use_decoder}" && echo "+ Decoder" || echo "- Decoder")): ${asr_config} -> ${asr_exp}"
    require_files "run stage 7 first" "${asr_stats_dir}/.done"
    # the same test as the "+ Decoder" / "- Decoder" labels of RESULTS.md
    has_decoder=$(${python} local/asr_config.py has_decoder "${asr_config}")
    if [ "${has_decoder}" != "${use_decoder}" ]; then
        die "--use_decoder ${use_decoder} but ${asr_config} $([ "${has_decoder}" = true ] && echo has || echo "has no") decoder"
    fi
    sig="config=$(sig_of "${asr_config}") stats=$(sig_of "${asr_stats_dir}/.done") args=${asr_args}"
    if ! is_trained "${asr_exp}" "${sig}" "${inference_asr_model}"; then
        start_training "${asr_exp}" "${sig}"
        current_log=${asr_exp}/train.log
        train_espnet "${asr_exp}" "${sig}" "${inference_asr_model}" "${asr_train_module}" \
            --use_preprocessor true "${token_opts[@]}" \
            --train_data_path_and_name_and_type "${data_feats}/${train_set}/wav.scp,speech,sound" \
            --train_data_path_and_name_and_type "${data_feats}/${train_set}/text,text,text" \
            --valid_data_path_and_name_and_type "${data_feats}/${valid_set}/wav.scp,speech,sound" \
            --valid_data_path_and_name_and_type "${data_feats}/${valid_set}/text,text,text" \
            --train_shape_file "${asr_stats_dir}/train/speech_shape" \
            --train_shape_file "${asr_stats_dir}/train/text_shape.bpe" \
            --valid_shape_file "${asr_stats_dir}/valid/speech_shape" \
            --valid_shape_file "${asr_stats_dir}/valid/text_shape.bpe" \
            --normalize global_mvn --normalize_conf stats_file="${asr_stats_dir}/train/feats_stats.npz" \
            --frontend_conf fs=16k --fold_length 80000 --fold_length 150 --resume true \
            --output_dir "${asr_exp}" --config "${asr_config}" ${asr_args}
    fi
    end_stage
fi

if [ ${stage} -le 9 ] && [ ${stop_stage} -ge 9 ]; then
    begin_stage 9 "Decoding ${test_sets} with ${asr_exp}/${inference_asr_model} (${inference_config})"
    require_files "run stage 8 first" "${asr_exp}/.done" "${asr_exp}/${inference_asr_model}"
    decode_data=()
    for dset in ${test_sets}; do
        require_files "run stage 3 first" "${data_feats}/${dset}/wav.scp"
        decode_data+=("${dset}=${data_feats}/${dset}")
    done
    decode_opts=()
    if "${use_ngram}"; then
        require_files "run stage 6 first" "${ngram_exp}/${ngram_num}gram.bin"
        decode_opts+=(--ngram_file "${ngram_exp}/${ngram_num}gram.bin")
        [ -n "${ngram_weight}" ] && decode_opts+=(--ngram_weight "${ngram_weight}")
    fi
    if "${use_lm}"; then
        require_files "run stage 6 with --use_lm true first" "${lm_exp}/valid.loss.ave.pth"
        decode_opts+=(--lm_train_config "${lm_exp}/config.yaml" --lm_file "${lm_exp}/valid.loss.ave.pth")
    fi
    sig="model=$(sig_of "${asr_exp}/.done") config=$(sig_of "${inference_config}") opts=${decode_opts[*]} args=${inference_args}"
    decode_dir=${asr_exp}/decode_${inference_tag}
    current_log=${decode_dir}/logdir/asr_inference.*.log
    decode_sets "${asr_exp}" "${asr_exp}/${inference_asr_model}" "${inference_config}" "${decode_dir}" "${sig}" \
        "${decode_data[@]}" -- "${decode_opts[@]}"
    end_stage
fi

if [ ${stage} -le 10 ] && [ ${stop_stage} -ge 10 ]; then
    begin_stage 10 "Scoring (jiwer) and ${results}"
    for dset in ${test_sets}; do
        out=${asr_exp}/decode_${inference_tag}/${dset}
        [ -f "${out}/.done" ] || die "${out} has no complete decoding; run stage 9 first"
        ${python} utils/score_wer.py "${data_feats}/${dset}/text" "${out}/text" "${out}/score_wer" >/dev/null
        log "${dset}: $(grep '^%WER' "${out}/score_wer/result.txt")"
    done
    ${python} local/make_results.py --exp_dir "${expdir}" --test_sets "${test_sets}" --out "${results}"
    log "Results: ${results}"
    end_stage
fi

if [ ${stage} -le 11 ] && [ ${stop_stage} -ge 11 ]; then
    begin_stage 11 "Mamba-HuBERT and HuBERT pretraining (iterations 1 and 2), SSAMBA"
    # shellcheck disable=SC2086
    local/ssl.sh --ngpu "${ngpu}" --python "${python}" --dumpdir "${dumpdir}" --expdir "${expdir}" \
        --train_set "${train_set}" --valid_set "${valid_set}" \
        --hubert_label_layer "${hubert_label_layer}" --ssl_tag "${ssl_tag}" ${ssl_opts}
    if [ -n "${ssamba_opts}" ]; then
        # shellcheck disable=SC2086
        local/ssamba.sh --ngpu "${ngpu}" --python "${python}" --train_set "${train_set}" --dumpdir "${dumpdir}" \
            --expdir "${expdir}" ${ssamba_opts}
    fi
    end_stage
fi

if [ ${stage} -le 12 ] && [ ${stop_stage} -ge 12 ]; then
    begin_stage 12 "Downstream ASR: CTC fine-tuning (+ 4-gram) and frozen upstream + Conformer"
    # shellcheck disable=SC2086
    local/downstream.sh --ngpu "${ngpu}" --inference_nj "${inference_nj}" --python "${python}" \
        --dumpdir "${dumpdir}" --expdir "${expdir}" --train_set "${train_set}" --valid_set "${valid_set}" \
        --nbpe "${nbpe}" --bpemode "${bpemode}" --ngram_num "${ngram_num}" \
        --hubert_label_layer "${hubert_label_layer}" --ssl_tag "${ssl_tag}" --results "${results}" ${downstream_opts}
    end_stage
fi

if [ ${stage} -le 13 ] && [ ${stop_stage} -ge 13 ]; then
    begin_stage 13 "Layer-wise mutual information (analysis/run_mine.py)"
    mkdir -p "${expdir}/mi"
    current_log=${expdir}/mi/run_mine.log
    # shellcheck disable=SC2086
    ${python} "${MAMBA_MI_ROOT}/analysis/run_mine.py" "${expdir}" --n_utts "${mi_n_utts}" ${mi_args} 2>&1 \
        | tee "${current_log}"
    end_stage
fi

log "Successfully finished. [elapsed=${SECONDS}s]"
