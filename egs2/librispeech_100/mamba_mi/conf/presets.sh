# Corpus presets: what --corpus and --mini_preset choose. Sourced by run.sh (the
# configs and the options of stages 11-13), mamba_mi.sh and local/data.sh (the sizes
# of the mini corpus).

# corpus_preset CORPUS MINI_PRESET: sets conf (the directory of the ASR configs of
# stages 7-10), nbpe, mi_n_utts, mi_args, ssamba_opts, ssl_opts and downstream_opts.
corpus_preset() {
    check_preset_names "$1" "$2"
    if [ "$1" = librispeech ]; then
        conf=conf nbpe=5000 mi_n_utts=1000 mi_args=""
        ssamba_opts="--ssamba_config conf/ssamba/tiny.yaml"  # SSAMBA-tiny; conf/ssamba/base.yaml for base
        ssl_opts="--conf_dir conf/ssl --kmeans_portion 0.1"
        downstream_opts="--conf_dir conf/downstream"
    elif [ "$2" = tiny ]; then
        conf=conf/tiny nbpe=40 mi_n_utts=8
        ssamba_opts="--ssamba_config conf/ssamba/mini.yaml --max_steps 5"
        ssl_opts="--conf_dir conf/ssl/tiny --n_clusters_it1 10 --n_clusters_it2 10 --kmeans_n_init 2 --model_jobs 2"
        downstream_opts="--conf_dir conf/downstream/tiny --test_utts 4 --inference_nj 1 --model_jobs 2"
        mi_args="--epochs 5 --lr 1e-3 --max_frames 32 --mine_batch_size 32"
    else
        conf=conf/mini nbpe=150 mi_n_utts=100
        ssamba_opts="--ssamba_config conf/ssamba/mini.yaml"
        ssl_opts="--conf_dir conf/ssl/mini --train_utts 400 --valid_utts 40 --n_clusters_it2 100 --kmeans_n_init 5 --model_jobs 2"
        downstream_opts="--conf_dir conf/downstream/mini --valid_utts 40 --test_utts 40 --inference_nj 1 --model_jobs 2"
        mi_args="--epochs 20 --lr 1e-3 --max_frames 64 --mine_batch_size 64"
    fi
}

# mini_corpus_sizes MINI_PRESET: fills the empty sizes of the mini corpus from the
# preset: mini_train_speakers, mini_train_utts (per training speaker),
# mini_eval_speakers, mini_eval_utts (per speaker of each dev/test set) and
# mini_lm_sentences (extra LM text).
mini_corpus_sizes() {
    local sizes
    check_preset_names mini "$1"
    if [ "$1" = tiny ]; then sizes=(4 10 2 4 400); else sizes=(48 50 6 20 20000); fi
    mini_train_speakers=${mini_train_speakers:-${sizes[0]}}
    mini_train_utts=${mini_train_utts:-${sizes[1]}}
    mini_eval_speakers=${mini_eval_speakers:-${sizes[2]}}
    mini_eval_utts=${mini_eval_utts:-${sizes[3]}}
    mini_lm_sentences=${mini_lm_sentences:-${sizes[4]}}
}

# check_preset_names CORPUS MINI_PRESET
check_preset_names() {
    case "$1" in
        mini | librispeech) ;;
        *) die "--corpus must be mini or librispeech, got '$1'" ;;
    esac
    case "$2" in
        tiny | default) ;;
        *) die "--mini_preset must be tiny or default, got '$2'" ;;
    esac
}
