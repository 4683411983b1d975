#!/usr/bin/env bash
# Stage 1 of the recipe: Kaldi-style data directories for LibriSpeech-100 or the
# synthesized mini corpus.
#
# Writes data/{train_clean_100,dev_clean,dev_other,test_clean,test_other}
# ({wav.scp,text,utt2spk,spk2utt}), data/dev (dev_clean + dev_other, the
# validation set) and data/local/other_text/text (extra text for language models;
# the mini corpus provides one, LibriSpeech's needs --download_lm_text true).
# Each data directory is validated (missing or unreadable audio, sample rate,
# empty transcripts, ids missing from wav.scp) before this script succeeds.
. utils/common.sh  # set -Eeuo pipefail, log, die, recipe_init
. conf/presets.sh  # mini_corpus_sizes

## General
python=python3         # python of the virtual environment (path.sh puts it first)
ngpu=0                 # GPUs (none needed: data preparation runs on the CPU)
nj=2                   # parallel processes (mini synthesis, validation)
## Corpus
corpus=mini            # mini (synthesized with espeak-ng, offline) or librispeech
librispeech_dir=""     # existing LibriSpeech directory (holding train-clean-100, ...); empty: download
download_dir=downloads # where downloads and the mini corpus go
download_lm_text=false # librispeech: also fetch librispeech-lm-norm.txt.gz (openslr 11) for LMs
data_dir=data          # output directory
## Mini corpus (see local/make_mini_corpus.py; empty sizes: from the preset)
mini_dir=""            # where the mini corpus goes; empty: ${download_dir}/mini_<sizes>_seed<seed>
mini_seed=1            # seed of the mini corpus
mini_preset=default    # tiny or default (conf/presets.sh)
mini_train_speakers="" # training speakers
mini_train_utts=""     # utterances per training speaker
mini_eval_speakers=""  # speakers per dev/test set
mini_eval_utts=""      # utterances per dev/test speaker
mini_lm_sentences=""   # sentences of extra LM text

help_message="Usage: $0 [options]   (run from the recipe directory)"
recipe_init "$@"
mini_corpus_sizes "${mini_preset}"

sets="train-clean-100 dev-clean dev-other test-clean test-other"
openslr=https://www.openslr.org/resources
# md5 sums published in ${openslr}/12/md5sum.txt
declare -A md5=(
    [train-clean-100]=2a93770f6d5c6c964bc36631d331a522
    [dev-clean]=42e2234ba48799c1f50f24a7926300a1
    [dev-other]=c8d0bcc9cca99d4f8b62fcc847357931
    [test-clean]=32fa31d27d2e1cad72775fee3f4849a9
    [test-other]=fb5a50374b501bb3bac4815ee91d3135
)

fetch() {
    # fetch URL FILE: download with resume; retries on a network failure.
    local url=$1 file=$2
    if command -v wget >/dev/null; then
        wget --continue --tries=3 --progress=dot:giga -O "${file}" "${url}"
    elif command -v curl >/dev/null; then
        curl --fail --location --retry 3 --continue-at - -o "${file}" "${url}"
    else
        die "neither wget nor curl is installed"
    fi
}

download_librispeech() {
    # Downloads (resuming partial files), checks md5 sums and unpacks each set once.
    local dir=$1 part archive
    mkdir -p "${dir}"
    for part in ${sets}; do
        if [ -f "${dir}/LibriSpeech/${part}/.complete" ]; then
            log "${part}: already unpacked"
            continue
        fi
        archive=${dir}/${part}.tar.gz
        if [ ! -f "${archive}.md5ok" ]; then
            log "Downloading ${part} (resumable) to ${archive}"
            fetch "${openslr}/12/${part}.tar.gz" "${archive}" \
                || die "download of ${part} failed; rerun to resume it (no network? use --librispeech_dir or --corpus mini)"
            if [ "$(md5sum "${archive}" | cut -d' ' -f1)" != "${md5[${part}]}" ]; then
                die "${archive}: md5 sum differs from ${md5[${part}]} (corrupt or truncated); delete it and rerun"
            fi
            touch "${archive}.md5ok"
        fi
        log "Unpacking ${archive}"
        rm -rf "${dir}/LibriSpeech/${part}"
        tar -xzf "${archive}" -C "${dir}" || die "${archive} does not unpack (corrupt archive); delete it and rerun"
        touch "${dir}/LibriSpeech/${part}/.complete"
    done
}

download_lm_corpus() {
    local dir=$1 out=$2 archive=${dir}/librispeech-lm-norm.txt.gz
    mkdir -p "${dir}" "$(dirname "${out}")"
    if [ ! -f "${archive}.ok" ]; then
        fetch "${openslr}/11/librispeech-lm-norm.txt.gz" "${archive}" || die "download of ${archive} failed; rerun to resume it"
        gzip -t "${archive}" || die "${archive} is corrupt (gzip -t failed); delete it and rerun"
        touch "${archive}.ok"
    fi
    # ids make it a Kaldi-style text file like the transcripts
    gzip -dc "${archive}" | awk '{ printf("lm_%09d %s\n", NR, $0) }' >"${out}.tmp"
    mv "${out}.tmp" "${out}"
}

other_text=${data_dir}/local/other_text/text
mkdir -p "${data_dir}/local/other_text"
case "${corpus}" in
    mini)
        if [ -z "${mini_dir}" ]; then
            mini_dir=${download_dir}/mini_${mini_train_speakers}x${mini_train_utts}_${mini_eval_speakers}x${mini_eval_utts}_lm${mini_lm_sentences}_seed${mini_seed}
        fi
        log "Synthesizing the mini corpus into ${mini_dir} (nj=${nj})"
        ${python} local/make_mini_corpus.py --out_dir "${mini_dir}" --seed "${mini_seed}" --nj "${nj}" \
            --train_speakers "${mini_train_speakers}" --train_utts_per_speaker "${mini_train_utts}" \
            --eval_speakers "${mini_eval_speakers}" --eval_utts_per_speaker "${mini_eval_utts}" \
            --lm_sentences "${mini_lm_sentences}"
        librispeech_dir=${mini_dir}/LibriSpeech
        awk '{ printf("lm_%09d %s\n", NR, $0) }' "${mini_dir}/lm_text.txt" >"${other_text}.tmp"
        mv "${other_text}.tmp" "${other_text}"
        ;;
    librispeech)
        if [ -z "${librispeech_dir}" ]; then
            download_librispeech "${download_dir}"
            librispeech_dir=${download_dir}/LibriSpeech
        fi
        if [ "${download_lm_text}" = true ]; then
            download_lm_corpus "${download_dir}" "${other_text}"
        else
            rm -f "${other_text}"
        fi
        ;;
    *)
        die "--corpus must be mini or librispeech, got '${corpus}'"
        ;;
esac

[ -d "${librispeech_dir}" ] || die "--librispeech_dir ${librispeech_dir}: no such directory"
missing=""
for part in ${sets}; do
    [ -d "${librispeech_dir}/${part}" ] || missing+=" ${part}"
done
[ -z "${missing}" ] || die "${librispeech_dir} lacks the set(s):${missing} (expected ${librispeech_dir}/<set>/<speaker>/<chapter>/)"

for part in ${sets}; do
    out=${data_dir}/${part//-/_}
    log "Preparing ${out} from ${librispeech_dir}/${part}"
    ${python} local/prepare_librispeech.py "${librispeech_dir}" "${part}" "${out}"
done

log "Validating the data directories"
failed=""
for part in ${sets}; do
    out=${data_dir}/${part//-/_}
    ${python} utils/validate_data_dir.py "${out}" || failed+=" ${out}"
done
[ -z "${failed}" ] || die "invalid data directories:${failed} (problems listed above)"

${python} utils/data_dir.py combine "${data_dir}/dev" "${data_dir}/dev_clean" "${data_dir}/dev_other"
log "Successfully finished. [elapsed=${SECONDS}s]"
