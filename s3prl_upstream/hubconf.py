"""S3PRL entry points (hub functions) for mamba-mi HuBERT checkpoints.

- ``mamba_hubert_local``: Mamba-HuBERT (ConBiMamba encoder) only.
- ``transformer_hubert_local``: the Transformer HuBERT baseline only.
- ``mamba_mi_hubert_local``: either, as the checkpoint's config says.

S3PRL needs one function per name; all three take the same arguments:

- ``ckpt``: the model file (S3PRL's ``path_or_url``); the training ``config.yaml``
  is read from the same directory unless ``config`` names it;
- ``config``, ``always_eval`` (from S3PRL's ``extra_conf``): see
  :class:`s3prl_upstream.expert.UpstreamExpert`;
- ``refresh``: ignored (nothing is downloaded).

The names end in ``_local`` as S3PRL's names for local checkpoints do.
"""

from typing import Optional, Tuple

__all__ = ["mamba_hubert_local", "mamba_mi_hubert_local", "transformer_hubert_local"]


def _expert(ckpt: Optional[str], config: Optional[str], encoder: Optional[Tuple[str, ...]], name: str,
            always_eval: bool):
    if not ckpt:
        raise ValueError(f"S3PRL upstream '{name}' needs a checkpoint: pass path_or_url=<model file>")
    if str(ckpt).startswith(("http://", "https://")):
        raise ValueError(f"S3PRL upstream '{name}' reads local files only, got the URL {ckpt}")
    from s3prl_upstream.expert import UpstreamExpert

    return UpstreamExpert(ckpt, config=config, encoder=encoder, always_eval=always_eval)


def mamba_hubert_local(ckpt: str = None, config: str = None, always_eval: bool = True, refresh: bool = False):
    """Mamba-HuBERT from a local ESPnet SSL checkpoint (encoder ``conbimamba``); see the module docstring."""
    return _expert(ckpt, config, ("conbimamba",), "mamba_hubert_local", always_eval)


def transformer_hubert_local(ckpt: str = None, config: str = None, always_eval: bool = True, refresh: bool = False):
    """Transformer HuBERT from a local ESPnet SSL checkpoint (encoder ``hubert_transformer``, or ESPnet's
    ``transformer``); see the module docstring."""
    return _expert(ckpt, config, ("hubert_transformer", "transformer"), "transformer_hubert_local", always_eval)


def mamba_mi_hubert_local(ckpt: str = None, config: str = None, always_eval: bool = True, refresh: bool = False):
    """Mamba-HuBERT or Transformer HuBERT, whichever the checkpoint's config names; see the module docstring."""
    return _expert(ckpt, config, None, "mamba_mi_hubert_local", always_eval)
