"""K-means pseudo labels for HuBERT pretraining, in the files ESPnet's SSL task reads.

Iteration 1 clusters MFCCs (13 coefficients with deltas and delta-deltas); iteration
2 clusters the features of one layer of the iteration-1 model. Labels are written at
the model's frame rate (one per CNN frame: ``(N - 400) // 320 + 1`` labels for ``N``
samples with HuBERT's CNN), so the SSL task reads them with ``label_downsampling: 1``.
MFCCs are computed every 10 ms and every second frame is kept, which puts each label
at the centre of its CNN frame.

K-means is scikit-learn's ``MiniBatchKMeans``, fit on a random sample of utterances
(``--portion``) and frames (``--max_fit_frames``) of one data directory and applied
to every utterance of every given data directory.

Outputs, for each output directory::

    <out_dir>/tokens.txt          "0" ... "K-1" and "<unk>": the SSL task's token_list
    <out_dir>/kmeans.pkl          the fitted MiniBatchKMeans (pickle)
    <out_dir>/kmeans.json         what was fit on (feature, layer, frames, inertia ...)
    <out_dir>/<dset>/text         "<utt> <label> <label> ..." (token_type word)
    <out_dir>/<dset>/text_shape   "<utt> <number of labels>"
    <out_dir>/<dset>/speech_shape "<utt> <number of samples>"

where ``<dset>`` is the name of each input data directory.

Example (``python -m espnet_mamba.bin.kmeans`` runs :func:`main`)::

    python -m espnet_mamba.bin.kmeans --feature mfcc --n_clusters 100 \\
        --fit_data_dir dump/raw/train_clean_100 \\
        --data_dirs dump/raw/train_clean_100 dump/raw/dev \\
        --out_dir dump/ssl/it1_mfcc_km100
    python -m espnet_mamba.bin.kmeans --feature ssl --layers 6 9 --n_clusters 500 \\
        --ssl_model exp/ssl_mamba_hubert_it1/latest.pth ... \\
        --out_dir "dump/ssl/it2_mamba_hubert_L{layer}_km500"
"""

import argparse
import json
import logging
import pickle
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from espnet_mamba.io import atomic_write, atomic_write_text, read_mono_audio, read_wav_scp
from espnet_mamba.ssl.model import load_ssl_model, num_encoder_layers, ssl_hidden_states

__all__ = [
    "UNK",
    "MfccFeatures",
    "SslLayerFeatures",
    "fit_kmeans",
    "get_parser",
    "iter_wav_scp",
    "main",
    "num_frames",
    "write_labels",
    "write_token_list",
]

UNK = "<unk>"
SAMPLE_RATE = 16000


def num_frames(num_samples: int, window: int = 400, stride: int = 320) -> int:
    """Frames of a CNN with receptive field ``window`` and stride ``stride`` (no padding)."""
    return max(0, (num_samples - window) // stride + 1)


def iter_wav_scp(scp: Path, keys: Optional[Sequence[str]] = None) -> Iterator[Tuple[str, np.ndarray]]:
    """Yield ``(utt, waveform (N,) float32)`` for the entries of a wav.scp (16 kHz mono files).

    Raises:
        FileNotFoundError, ValueError: See :func:`espnet_mamba.io.read_wav_scp`.
        espnet_mamba.io.AudioError: Unreadable audio, another rate, several channels.
    """
    entries = read_wav_scp(scp)
    for key in keys if keys is not None else entries:
        yield key, read_mono_audio(entries[key], SAMPLE_RATE, name=f"{key} of {scp}")


class MfccFeatures:
    """MFCC + deltas + delta-deltas (39 dims), one vector per CNN frame.

    Args:
        window: Receptive field of the CNN in samples (MFCC frame length).
        stride: Stride of the CNN in samples; MFCCs are taken every ``stride / 2``
            samples and every second one is kept.
    """

    def __init__(self, window: int = 400, stride: int = 320):
        if window <= 0 or stride <= 0 or stride % 2:
            raise ValueError(
                f"window and stride must be positive and stride even, got window={window}, stride={stride}"
            )
        self.window, self.stride = window, stride
        self.layers = (None,)
        self.description = {"feature": "mfcc", "window": window, "stride": stride}

    def __call__(self, wav: np.ndarray) -> Dict[Optional[int], np.ndarray]:
        """Features of one utterance: ``{None: (T, 39)}``, ``T = num_frames(len(wav))``."""
        import torchaudio.compliance.kaldi as kaldi
        import torchaudio.functional as F

        frames = num_frames(len(wav), self.window, self.stride)
        if frames == 0:
            return {None: np.zeros((0, 39), dtype=np.float32)}
        x = torch.from_numpy(np.asarray(wav, dtype=np.float32))[None]
        mfcc = kaldi.mfcc(
            x,
            sample_frequency=SAMPLE_RATE,
            frame_length=1000.0 * self.window / SAMPLE_RATE,
            frame_shift=1000.0 * self.stride / 2 / SAMPLE_RATE,
            use_energy=False,
            dither=0.0,
        )  # (M, 13), M = (N - window) // (stride / 2) + 1
        mfcc_t = mfcc.T.unsqueeze(0)  # (1, 13, M)
        delta = F.compute_deltas(mfcc_t)
        ddelta = F.compute_deltas(delta)
        feats = torch.cat([mfcc_t, delta, ddelta], dim=1)[0].T  # (M, 39)
        feats = feats[::2][:frames]
        if feats.shape[0] != frames:
            raise RuntimeError(f"MFCC frames {feats.shape[0]} != CNN frames {frames}")
        return {None: feats.numpy()}


class SslLayerFeatures:
    """Hidden states of chosen layers of a pretrained mamba-mi HuBERT model.

    The model's encoder must be registered in ESPnet's SSL task
    (:func:`espnet_mamba.registry.register`; ``python -m espnet_mamba.bin.kmeans`` does).

    Args:
        model_file: SSL checkpoint (``config.yaml`` beside it unless ``config_file``).
        layers: Layer indices: 0 is the input of the first encoder layer, ``i`` the
            output of layer ``i`` (1 to the number of layers).
        config_file: The model's training config.
        device: Where to run the model.

    Raises:
        ValueError: A layer index is out of range for the model.
    """

    def __init__(self, model_file: str, layers: Sequence[int], config_file: Optional[str] = None, device: str = "cpu"):
        if not layers:
            raise ValueError("layers is empty: give at least one layer index")
        self.model, config = load_ssl_model(model_file, config_file, device=device)
        n_layers = num_encoder_layers(self.model)
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= n_layers:
                raise ValueError(
                    f"layer {layer!r} is out of range for {model_file}: its encoder has {n_layers} layers "
                    f"(valid: 0 = input of layer 1, 1 ... {n_layers})"
                )
        self.layers = tuple(layers)
        self.device = device
        self.description = {"feature": "ssl", "model": str(model_file), "encoder": config["encoder"]}

    @torch.no_grad()
    def __call__(self, wav: np.ndarray) -> Dict[int, np.ndarray]:
        """Features of one utterance: ``{layer: (T, D)}``."""
        x = torch.from_numpy(np.asarray(wav, dtype=np.float32))[None].to(self.device)
        hs, lens = ssl_hidden_states(self.model, x, torch.tensor([x.shape[1]], device=self.device))
        n = int(lens[0])
        return {layer: hs[layer][0, :n].float().cpu().numpy() for layer in self.layers}


def fit_kmeans(
    feats: np.ndarray,
    n_clusters: int,
    seed: int = 0,
    batch_size: int = 10000,
    max_iter: int = 100,
    n_init: int = 20,
    max_no_improvement: int = 100,
):
    """Fit ``MiniBatchKMeans`` (HuBERT's settings by default) on frames ``(M, D)``.

    Raises:
        ValueError: ``n_clusters < 2``, more clusters than frames, or bad shapes.
    """
    from sklearn.cluster import MiniBatchKMeans

    if isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or n_clusters < 2:
        raise ValueError(f"n_clusters must be an integer >= 2, got {n_clusters!r}")
    if feats.ndim != 2:
        raise ValueError(f"feats must be (frames, dim), got shape {feats.shape}")
    if n_clusters > feats.shape[0]:
        raise ValueError(
            f"n_clusters={n_clusters} is more than the {feats.shape[0]} frames sampled to fit k-means: "
            f"use fewer clusters or more data (--portion, --max_fit_frames)"
        )
    for name, value in (("batch_size", batch_size), ("max_iter", max_iter), ("n_init", n_init)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    km = MiniBatchKMeans(
        n_clusters=n_clusters,
        init="k-means++",
        max_iter=max_iter,
        batch_size=batch_size,
        tol=0.0,
        max_no_improvement=max_no_improvement,
        n_init=n_init,
        reassignment_ratio=0.0,
        random_state=seed,
    )
    km.fit(feats.astype(np.float32))
    return km


def write_token_list(path: Path, n_clusters: int) -> None:
    """Token list of the SSL task: the cluster ids ``0 ... K-1`` (ids equal labels), then ``<unk>``."""
    atomic_write_text(path, "".join(f"{i}\n" for i in range(n_clusters)) + f"{UNK}\n")


def write_labels(out_dir: Path, labels: Dict[str, np.ndarray], num_samples: Dict[str, int]) -> None:
    """Write ``text``, ``text_shape`` and ``speech_shape`` of one data set (sorted by utterance)."""
    out_dir = Path(out_dir)
    keys = sorted(labels)
    files = {
        "text": (f"{k} {' '.join(map(str, labels[k].tolist()))}\n" for k in keys),
        "text_shape": (f"{k} {len(labels[k])}\n" for k in keys),
        "speech_shape": (f"{k} {num_samples[k]}\n" for k in keys),
    }
    for name, lines in files.items():
        with atomic_write(out_dir / name) as f:
            f.writelines(lines)


def _sample_fit_frames(
    extractor: Callable, scp: Path, portion: float, max_frames: int, seed: int
) -> Dict[Optional[int], np.ndarray]:
    keys = list(read_wav_scp(scp))
    rng = np.random.default_rng(seed)
    n_utts = max(1, int(round(portion * len(keys))))
    chosen = sorted(rng.choice(len(keys), size=n_utts, replace=False).tolist())
    collected: Dict[Optional[int], List[np.ndarray]] = {layer: [] for layer in extractor.layers}
    for i, (key, wav) in enumerate(iter_wav_scp(scp, [keys[j] for j in chosen]), 1):
        for layer, feats in extractor(wav).items():
            collected[layer].append(feats)
        if i % 1000 == 0:
            logging.info(f"features of {i}/{n_utts} utterances for fitting")
    sample = {}
    for layer, chunks in collected.items():
        feats = np.concatenate(chunks, axis=0)
        if feats.shape[0] > max_frames:
            feats = feats[np.sort(rng.choice(feats.shape[0], size=max_frames, replace=False))]
        sample[layer] = feats
    logging.info(f"fitting on {n_utts} of {len(keys)} utterances of {scp}, {feats.shape[0]} frames")
    return sample


def _out_dirs(template: str, layers: Sequence[Optional[int]]) -> Dict[Optional[int], Path]:
    if len(layers) > 1 and "{layer}" not in template:
        raise ValueError(f"--out_dir must contain '{{layer}}' when several layers are given: {template!r}")
    return {layer: Path(template.replace("{layer}", str(layer))) for layer in layers}


def get_parser() -> argparse.ArgumentParser:
    """Command-line options of ``python -m espnet_mamba.bin.kmeans``."""
    parser = argparse.ArgumentParser(
        description="K-means pseudo labels (MFCC or SSL layer features) for HuBERT pretraining",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--feature", choices=("mfcc", "ssl"), required=True, help="what to cluster")
    parser.add_argument("--ssl_model", default=None, help="SSL model file (--feature ssl)")
    parser.add_argument("--ssl_config", default=None, help="its config (default: config.yaml beside it)")
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="layer indices (--feature ssl)")
    parser.add_argument("--n_clusters", type=int, required=True, help="number of clusters K")
    parser.add_argument("--fit_data_dir", required=True, help="data dir (with wav.scp) to fit k-means on")
    parser.add_argument("--data_dirs", nargs="+", required=True, help="data dirs to label")
    parser.add_argument("--out_dir", required=True, help="output dir; '{layer}' is replaced by the layer")
    parser.add_argument("--portion", type=float, default=1.0, help="fraction of utterances to fit on")
    parser.add_argument("--max_fit_frames", type=int, default=1000000, help="at most this many frames to fit on")
    parser.add_argument("--batch_size", type=int, default=10000, help="MiniBatchKMeans batch size")
    parser.add_argument("--max_iter", type=int, default=100, help="MiniBatchKMeans max_iter")
    parser.add_argument("--n_init", type=int, default=20, help="MiniBatchKMeans n_init")
    parser.add_argument("--seed", type=int, default=0, help="random seed (sampling and k-means)")
    parser.add_argument("--device", default="cpu", help="device of the SSL model")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Fit k-means and write label files (see the module docstring)."""
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    if not 0.0 < args.portion <= 1.0:
        raise ValueError(f"--portion must be in (0, 1], got {args.portion}")
    if args.max_fit_frames < 1:
        raise ValueError(f"--max_fit_frames must be >= 1, got {args.max_fit_frames}")
    if args.n_clusters < 2:
        raise ValueError(f"--n_clusters must be >= 2, got {args.n_clusters}")
    if args.feature == "mfcc":
        if args.ssl_model is not None or args.layers is not None:
            raise ValueError("--ssl_model and --layers are for --feature ssl")
        extractor = MfccFeatures()
    else:
        if args.ssl_model is None or args.layers is None:
            raise ValueError("--feature ssl needs --ssl_model and --layers")
        extractor = SslLayerFeatures(args.ssl_model, args.layers, args.ssl_config, args.device)
    out_dirs = _out_dirs(args.out_dir, extractor.layers)
    names = [Path(d).name for d in args.data_dirs]
    if len(set(names)) != len(names):
        raise ValueError(f"--data_dirs must have distinct names, got {names}")

    sample = _sample_fit_frames(
        extractor, Path(args.fit_data_dir) / "wav.scp", args.portion, args.max_fit_frames, args.seed
    )
    models = {}
    for layer, feats in sample.items():
        km = fit_kmeans(feats, args.n_clusters, args.seed, args.batch_size, args.max_iter, args.n_init)
        models[layer] = km
        out = out_dirs[layer]
        with atomic_write(out / "kmeans.pkl", "wb") as f:
            pickle.dump(km, f)
        info = dict(extractor.description, layer=layer, n_clusters=args.n_clusters, fit_data_dir=args.fit_data_dir,
                    fit_frames=int(feats.shape[0]), inertia_per_frame=float(km.inertia_) / max(1, feats.shape[0]))
        atomic_write_text(out / "kmeans.json", json.dumps(info, indent=2) + "\n")
        write_token_list(out / "tokens.txt", args.n_clusters)
        logging.info(f"k-means ({args.n_clusters} clusters) fit for layer {layer}: {info}")

    for data_dir, name in zip(args.data_dirs, names):
        labels = {layer: {} for layer in models}
        num_samples = {}
        for key, wav in iter_wav_scp(Path(data_dir) / "wav.scp"):
            num_samples[key] = len(wav)
            for layer, feats in extractor(wav).items():
                if feats.shape[0] == 0:
                    raise ValueError(
                        f"{data_dir}/wav.scp: utterance {key!r} is too short for one frame ({len(wav)} samples)"
                    )
                labels[layer][key] = models[layer].predict(feats.astype(np.float32))
        for layer in models:
            write_labels(out_dirs[layer] / name, labels[layer], num_samples)
        logging.info(f"labelled {len(num_samples)} utterances of {data_dir}")
