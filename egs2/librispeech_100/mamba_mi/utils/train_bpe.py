#!/usr/bin/env python3
"""Train a sentencepiece model on the transcripts of a Kaldi-style text file.

The first field of each line (the utterance id) is dropped. Writes
``<model_prefix>.model`` and ``<model_prefix>.vocab``; the token list for ESPnet
is made from the model afterwards (espnet2.bin.tokenize_text --write_vocabulary).

Usage:
    train_bpe.py --vocab_size 5000 --model_type unigram TEXT data/token_list/bpe_unigram5000/bpe
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import sentencepiece as spm


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("text", help="Kaldi-style text file (<utt> <transcript>)")
    parser.add_argument("model_prefix")
    parser.add_argument("--vocab_size", type=int, required=True)
    parser.add_argument("--model_type", default="unigram", choices=("unigram", "bpe", "char", "word"))
    parser.add_argument("--character_coverage", type=float, default=1.0)
    parser.add_argument("--input_sentence_size", type=int, default=100_000_000)
    parser.add_argument(
        "--hard_vocab_limit",
        default="true",
        choices=("true", "false"),
        help="false: a smaller vocabulary is fine when the text is too small for vocab_size",
    )
    args = parser.parse_args(argv)
    if args.vocab_size < 2:
        raise ValueError(f"--vocab_size must be >= 2, got {args.vocab_size}")
    with open(args.text, encoding="utf-8") as f:
        sentences = [line.split(maxsplit=1)[1].strip() for line in f if len(line.split(maxsplit=1)) == 2]
    if not sentences:
        print(f"train_bpe.py: {args.text}: no transcripts", file=sys.stderr)
        return 1
    Path(args.model_prefix).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "sentences.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            f.writelines(s + "\n" for s in sentences)
        spm.SentencePieceTrainer.train(
            input=corpus,
            model_prefix=args.model_prefix,
            vocab_size=args.vocab_size,
            model_type=args.model_type,
            character_coverage=args.character_coverage,
            input_sentence_size=args.input_sentence_size,
            shuffle_input_sentence=True,
            hard_vocab_limit=args.hard_vocab_limit == "true",
            seed_sentencepiece_size=1_000_000,
            minloglevel=1,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
