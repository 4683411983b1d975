"""Mamba-HuBERT and HuBERT checkpoints of mamba-mi as S3PRL upstreams.

Importing this package changes nothing; :func:`register` adds the upstreams to
``s3prl.hub``, after which S3PRL's own classes (and ESPnet's ``frontend: s3prl``)
accept their names::

    import s3prl_upstream
    from s3prl.nn import Featurizer, S3PRLUpstream

    s3prl_upstream.register()
    upstream = S3PRLUpstream("mamba_hubert_local", path_or_url="exp/ssl_x/latest.pth")
    featurizer = Featurizer(upstream)  # trainable weighted sum of all layers
    all_hs, all_lens = upstream(wavs, wavs_len)  # input of layer 1, then each layer

Names (see :mod:`s3prl_upstream.hubconf`): ``mamba_hubert_local`` (ConBiMamba
encoder), ``transformer_hubert_local`` (Transformer encoder) and
``mamba_mi_hubert_local`` (either, read from the checkpoint's config). ESPnet's
entry points ``python -m espnet_mamba.bin.*`` call :func:`register`.
"""

import difflib

__all__ = ["UPSTREAM_NAMES", "UpstreamNotRegisteredError", "register"]

UPSTREAM_NAMES = ("mamba_hubert_local", "transformer_hubert_local", "mamba_mi_hubert_local")


class UpstreamNotRegisteredError(AttributeError):
    """An S3PRL upstream name that ``s3prl.hub`` does not know."""


def _missing_upstream(name: str):
    """Module ``__getattr__`` of ``s3prl.hub``: called only for names it lacks."""
    if name.startswith("__"):
        raise AttributeError(f"module 's3prl.hub' has no attribute {name!r}")
    from s3prl import hub

    close = difflib.get_close_matches(name, hub.options(), n=3)
    hint = f" Close names: {', '.join(close)}." if close else ""
    raise UpstreamNotRegisteredError(
        f"S3PRL upstream {name!r} is not registered.{hint} mamba-mi's upstreams are "
        f"{', '.join(UPSTREAM_NAMES)} (registered by s3prl_upstream.register())."
    )


def register() -> None:
    """Add mamba-mi's upstreams to ``s3prl.hub`` (idempotent).

    From then on, a name that ``s3prl.hub`` lacks (a typo in ``S3PRLUpstream(name)``)
    raises :class:`UpstreamNotRegisteredError`, an ``AttributeError`` that lists
    close names, instead of a bare ``AttributeError``.

    Raises:
        ModuleNotFoundError: S3PRL is not installed.
        RuntimeError: ``s3prl.hub`` already has a different function of one of
            these names.
    """
    from s3prl import hub

    from s3prl_upstream import hubconf

    for name in UPSTREAM_NAMES:
        function = getattr(hubconf, name)
        existing = hub.__dict__.get(name)
        if existing is not None and existing is not function:
            raise RuntimeError(f"s3prl.hub already has a different upstream named {name!r}: {existing}")
        setattr(hub, name, function)
    if "__getattr__" not in hub.__dict__:
        hub.__getattr__ = _missing_upstream
