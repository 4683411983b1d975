"""Find the trained models under an ``exp/`` directory and the evaluation data beside it.

A model directory is any directory under ``exp/`` that holds a training
``config.yaml`` (ESPnet's, or ``espnet_mamba.bin.ssamba_train``'s); the checkpoint is
picked from the files beside it: the one the recipe decodes (the average by the
config's first ``best_model_criterion``, :func:`decoded_checkpoint`), then
:data:`CHECKPOINT_PREFERENCE`; ``latest.pth`` first for pretrained SSL models, the
checkpoint that stage 12 builds on. Each directory becomes a
:class:`ModelEntry`: its kind (which extractor of :mod:`analysis.features` reads
it), the tags that place it in the paper's comparisons (decoder or not, HuBERT label
layer, SSAMBA size, upstream alone or with a downstream encoder), and, when the
directory cannot be measured, the reason (``problem``), so that the caller can
report a skip and go on with the other models.

The evaluation utterances come from Kaldi-style ``wav.scp`` files: by default
those of the recipe's dev and test sets found next to ``exp/`` (``dump/raw/<set>``
first, then ``data/<set>``), see :func:`default_wav_scps`.
"""

import fnmatch
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

from espnet_mamba.io import check_int, read_wav_scp

__all__ = [
    "CHECKPOINT_PREFERENCE",
    "DEFAULT_EVAL_SETS",
    "ModelEntry",
    "classify_config",
    "decoded_checkpoint",
    "default_wav_scps",
    "discover_models",
    "find_checkpoint",
    "select_utterances",
]

# Checkpoint file names, most preferred first (ESPnet's averaged and best models,
# then the newest epoch, then the resumable checkpoint).
CHECKPOINT_PREFERENCE = (
    "valid.acc.ave.pth",
    "valid.loss.ave.pth",
    "valid.acc.best.pth",
    "valid.loss.best.pth",
    "model.pth",
    "latest.pth",
)
# Pretrained SSL models: the final checkpoint, which stage 12 builds on.
_KIND_CHECKPOINTS = {"espnet-ssl": ("latest.pth",), "espnet-hubert": ("latest.pth",)}
DEFAULT_EVAL_SETS = ("dev_clean", "test_clean")
# Directories under exp/ that never hold models to measure.
_SKIP_DIR_NAMES = {"mi", "decode", "logdir", "att_ws", "images", "tensorboard", "ngram"}
# ESPnet encoders made of blocks (encoder.encoders), whatever their num_blocks default.
_LAYERED_ENCODERS = {"conformer", "transformer", "branchformer", "e_branchformer", "conbimamba"}
# ASR encoders that are a fine-tuned pretrained SSL model.
_FINETUNE_ENCODERS = {"hubert_finetune"}
_EPOCH_FILE = re.compile(r"^(\d+)epoch\.pth$")


@dataclass
class ModelEntry:
    """One model directory under ``exp/``.

    Attributes:
        name: Path of the directory relative to ``exp/`` (``/``-separated); unique.
        path: The directory.
        kind: Extractor name (``"espnet-asr"``, ``"espnet-ssl"``, ``"espnet-hubert"``,
            ``"ssamba"``), ``"unknown"`` when the config cannot be read (``problem``
            says why), or None when the directory is not a model we measure.
        config_path: Its config file, if any.
        checkpoint: The chosen checkpoint file, or None when there is none.
        config: The parsed config (a dict) when it could be read.
        tags: Comparison tags: ``family`` (``"asr"``, ``"ssl"``, ``"upstream"``,
            ``"upstream+downstream"``, ``"ssamba"``), ``encoder``, ``decoder`` (bool,
            ASR), ``label_layer`` (int, HuBERT iteration-2 targets), ``size``
            (``"tiny"``/``"base"``, SSAMBA), ``upstream`` (S3PRL name),
            ``pretrained`` (directory name of the SSL model a stage-12 model was
            built on) and ``pretrained_encoder`` (that model's encoder).
        problem: Why this model cannot be measured (None when it can).
        recipe_root: The parent of ``exp/``, where the recipe ran: relative paths in
            configs (statistics files, upstream checkpoints) start there.
    """

    name: str
    path: Path
    kind: Optional[str] = None
    config_path: Optional[Path] = None
    checkpoint: Optional[Path] = None
    config: Optional[dict] = None
    tags: Dict[str, object] = field(default_factory=dict)
    problem: Optional[str] = None
    recipe_root: Optional[Path] = None

    @property
    def ok(self) -> bool:
        return self.kind is not None and self.problem is None


def decoded_checkpoint(config: dict) -> str:
    """The averaged checkpoint ESPnet writes for a config's first ``best_model_criterion``
    (``<phase>.<metric>.ave.pth``; ``valid.loss.ave.pth`` without one): the model the
    recipe decodes, and so the one measured."""
    criteria = config.get("best_model_criterion") or [["valid", "loss"]]
    phase, metric = criteria[0][:2]
    return f"{phase}.{metric}.ave.pth"


def find_checkpoint(model_dir: Path, prefer: Sequence[str] = ()) -> Optional[Path]:
    """The checkpoint of a model directory: ``prefer``, then :data:`CHECKPOINT_PREFERENCE`.

    After the named files, the highest ``<N>epoch.pth``, then ``checkpoint.pth``
    (ESPnet's resumable file, whose ``"model"`` entry is the state dict), then the
    only other ``*.pth`` if there is exactly one. Broken symbolic links are ignored.
    """
    model_dir = Path(model_dir)
    for name in (*prefer, *CHECKPOINT_PREFERENCE):
        candidate = model_dir / name
        if candidate.is_file():
            return candidate
    epochs = []
    for candidate in model_dir.glob("*epoch.pth"):
        match = _EPOCH_FILE.match(candidate.name)
        if match and candidate.is_file():
            epochs.append((int(match.group(1)), candidate))
    if epochs:
        return max(epochs)[1]
    if (model_dir / "checkpoint.pth").is_file():
        return model_dir / "checkpoint.pth"
    others = [p for p in model_dir.glob("*.pth") if p.is_file()]
    return others[0] if len(others) == 1 else None


def classify_config(config: dict) -> Tuple[Optional[str], Dict[str, object], Optional[str]]:
    """Kind, tags and "not a model" reason of a training config (ESPnet or SSAMBA).

    Returns:
        ``(kind, tags, reason)``: kind is None (with a reason) for configs that are
        not encoder models (language models, tokenizers ...).
    """
    if not isinstance(config, dict):
        return None, {}, "config is not a YAML mapping"
    tags: Dict[str, object] = {}
    model = config.get("model")
    if isinstance(model, dict) and "embed_dim" in model and "depth" in model:
        # espnet_mamba.bin.ssamba_train: a "model" section of SSAMBAConfig fields.
        tags["family"] = "ssamba"
        size = {192: "tiny", 384: "small", 768: "base"}.get(model.get("embed_dim"))
        if size:
            tags["size"] = size
        return "ssamba", tags, None
    if "encoder" not in config:
        if "lm" in config:
            return None, tags, "language model (no encoder)"
        return None, tags, "not an encoder model (no 'encoder' in its config)"
    tags["encoder"] = config.get("encoder")
    frontend = config.get("frontend")
    upstream = None
    if frontend == "s3prl":
        upstream = ((config.get("frontend_conf") or {}).get("frontend_conf") or {}).get("upstream")
        tags["upstream"] = upstream
    if "ctc_conf" in config:
        if upstream is not None:
            # Stage 12: a pretrained upstream (fine-tuned or frozen) under an ESPnet
            # encoder with blocks ("upstream+downstream") or without ("upstream").
            # The extractor corrects this from the model it builds.
            blocks = (config.get("encoder_conf") or {}).get("num_blocks")
            layered = blocks > 0 if isinstance(blocks, int) else config.get("encoder") in _LAYERED_ENCODERS
            tags["family"] = "upstream+downstream" if layered else "upstream"
        elif isinstance((config.get("encoder_conf") or {}).get("ssl_model"), str) or \
                config.get("encoder") in _FINETUNE_ENCODERS:
            # Stage 12: a pretrained SSL model fine-tuned as the encoder ("alone").
            tags["family"] = "upstream"
        else:
            tags["family"] = "asr"
        decoder = config.get("decoder")
        ctc_weight = (config.get("model_conf") or {}).get("ctc_weight", 0.3)
        tags["decoder"] = bool(decoder not in (None, "none") and float(ctc_weight) < 1.0)
        return "espnet-asr", tags, None
    if "loss" in config and "util" in config:
        tags["family"] = "ssl"
        return "espnet-ssl", tags, None
    if "pred_masked_weight" in config:
        tags["family"] = "ssl"
        return "espnet-hubert", tags, None
    return None, tags, "unknown ESPnet task (not ASR or SSL)"


def _name_tags(name: str) -> Dict[str, object]:
    """Tags read from a directory name: HuBERT label layer and SSAMBA size."""
    tags: Dict[str, object] = {}
    lowered = name.lower()
    match = re.search(r"(?:label_?layer|layer|_l|^l)[_-]?(\d{1,2})(?![0-9])", lowered)
    if match:
        tags["label_layer"] = int(match.group(1))
    for size in ("tiny", "small", "base"):
        if re.search(rf"(?:^|[^a-z]){size}(?:[^a-z]|$)", lowered):
            tags["size"] = size
            break
    return tags


def _pretrained_checkpoint(config: dict) -> Optional[str]:
    """The pretrained SSL checkpoint a stage-12 model was built on, if any: ``path_or_url``
    of an S3PRL frontend, or ``encoder_conf.ssl_model`` of a fine-tuned encoder."""
    value = None
    if config.get("frontend") == "s3prl":
        value = ((config.get("frontend_conf") or {}).get("frontend_conf") or {}).get("path_or_url")
    if value is None:
        value = (config.get("encoder_conf") or {}).get("ssl_model")
    return str(value) if isinstance(value, str) and value else None


def _read_yaml(path: Path):
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _model_entry(exp_dir: Path, model_dir: Path, config_path: Path) -> ModelEntry:
    name = model_dir.relative_to(exp_dir).as_posix()
    entry = ModelEntry(name=name, path=model_dir, config_path=config_path,
                       recipe_root=exp_dir.absolute().parent)
    try:
        config = _read_yaml(config_path)
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        entry.kind = "unknown"
        entry.problem = f"{config_path}: unreadable config ({type(e).__name__}: {e})"
        return entry
    if not isinstance(config, dict):
        entry.kind = "unknown"
        entry.problem = f"{config_path}: not a YAML mapping"
        return entry
    entry.config = config
    kind, tags, reason = classify_config(config)
    entry.kind = kind
    entry.tags.update(_name_tags(name))
    entry.tags.update({k: v for k, v in tags.items() if v is not None})
    pretrained = _pretrained_checkpoint(config)
    if pretrained:
        # A stage-12 model: which pretrained model it was built on, and that model's label layer.
        pretrained_dir = Path(pretrained).parent.name
        entry.tags["pretrained"] = pretrained_dir
        if "label_layer" not in entry.tags:
            entry.tags.update({k: v for k, v in _name_tags(pretrained_dir).items() if k == "label_layer"})
        # The pretrained model's encoder (conbimamba or transformer), from its config.
        pretrained_config = entry.recipe_root / Path(pretrained).parent / "config.yaml"
        try:
            entry.tags["pretrained_encoder"] = _read_yaml(pretrained_config).get("encoder")
        except (OSError, yaml.YAMLError, UnicodeDecodeError, AttributeError):
            pass
    if kind is None:
        entry.problem = f"not measured: {reason}"
        return entry
    if (model_dir / ".started").exists() and not (model_dir / ".done").exists():
        entry.problem = f"{model_dir}: training has not finished (.started without .done)"
        return entry
    # Pretrained SSL models: the checkpoint stage 12 builds on; others: the one decoded.
    prefer = _KIND_CHECKPOINTS.get(kind) or (decoded_checkpoint(config),)
    entry.checkpoint = find_checkpoint(model_dir, prefer)
    if entry.checkpoint is None:
        entry.problem = f"{model_dir}: no checkpoint (*.pth) beside {config_path.name}"
    return entry


def discover_models(
    exp_dir, patterns: Optional[Sequence[str]] = None, exclude: Sequence[Path] = ()
) -> List[ModelEntry]:
    """Every model directory under ``exp_dir``, sorted by name.

    Args:
        exp_dir: The experiment directory (``exp/``).
        patterns: Optional glob patterns (``fnmatch``) on the model name; a model is
            kept if any pattern matches its name or its last path component.
        exclude: Directories not to search (e.g. the analysis output directory).

    Returns:
        Entries for measurable models and for directories that look like models
        but cannot be measured (``problem`` set); language models and other
        non-encoder configs are returned with ``kind=None``.

    Raises:
        FileNotFoundError: ``exp_dir`` does not exist or is not a directory.
    """
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise FileNotFoundError(f"{exp_dir}: experiment directory not found")
    excluded = {Path(p).resolve() for p in exclude}
    entries = []
    for root, dirs, files in os.walk(exp_dir, followlinks=False):
        root_path = Path(root)
        dirs[:] = sorted(
            d for d in dirs
            if d not in _SKIP_DIR_NAMES and not d.startswith((".", "decode_"))
            and (root_path / d).resolve() not in excluded
        )
        if root_path == exp_dir:
            continue
        if "config.yaml" not in files:
            continue
        name = root_path.relative_to(exp_dir).as_posix()
        if patterns and not any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(root_path.name, p) for p in patterns):
            continue
        entries.append(_model_entry(exp_dir, root_path, root_path / "config.yaml"))
    return sorted(entries, key=lambda e: e.name)


def default_wav_scps(exp_dir, sets: Sequence[str] = DEFAULT_EVAL_SETS) -> List[Path]:
    """The recipe's ``wav.scp`` of each evaluation set, looked up next to ``exp/``.

    For each set, ``<exp>/../dump/raw/<set>/wav.scp`` (the dumped audio) is used if
    it exists, else ``<exp>/../data/<set>/wav.scp``; sets found in neither are left out.
    """
    root = Path(exp_dir).resolve().parent
    found = []
    for name in sets:
        for candidate in (root / "dump" / "raw" / name / "wav.scp", root / "data" / name / "wav.scp"):
            if candidate.is_file():
                found.append(candidate)
                break
    return found


def select_utterances(wav_scps: Sequence[Path], n_utts: int, seed: int) -> List[Tuple[str, str]]:
    """``n_utts`` utterances drawn without replacement from the union of ``wav_scps``.

    The draw depends only on the seed and the set of utterance ids (not on file
    order); the result is sorted by utterance id. Fewer utterances than asked
    give all of them.

    Returns:
        ``[(utterance id, audio entry), ...]``.

    Raises:
        ValueError: ``n_utts < 1``, no ``wav.scp`` given, no utterance in them, or
            one utterance id with two different audio entries.
    """
    check_int("n_utts", n_utts)
    if not wav_scps:
        raise ValueError("no wav.scp to draw utterances from")
    table: Dict[str, str] = {}
    for scp in wav_scps:
        for utt, value in read_wav_scp(scp, allow_commands=True).items():
            if utt in table and table[utt] != value:
                raise ValueError(f"{scp}: utterance {utt!r} has another audio entry in an earlier wav.scp")
            table[utt] = value
    if not table:
        raise ValueError(f"no utterances in {', '.join(str(p) for p in wav_scps)}")
    ids = sorted(table)
    if n_utts < len(ids):
        ids = sorted(random.Random(seed).sample(ids, n_utts))
    return [(utt, table[utt]) for utt in ids]
