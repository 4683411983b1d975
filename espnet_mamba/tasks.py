"""The one place where mamba-mi's classes join ESPnet's task choices.

ESPnet has no plugin mechanism: each task keeps its choices in module-level
``ClassChoices`` objects (e.g. ``espnet2.tasks.asr.encoder_choices``). Adding our
classes to those before a task parses its arguments or builds a model is enough for
``--encoder conbimamba`` (or ``encoder: conbimamba`` in a config) to work, and for
``ASRTask.build_model_from_file`` to load a model trained that way.

Importing this module registers everything; :func:`register` is idempotent.

Example:
    >>> import espnet_mamba.tasks  # noqa: F401  (registers)
    >>> from espnet2.tasks.asr import ASRTask
    >>> model, train_args = ASRTask.build_model_from_file(config, checkpoint)
"""

import importlib

# (ESPnet task module, choices attribute, choice name, "module:Class" of ours)
CHOICES = (
    ("espnet2.tasks.asr", "encoder_choices", "conbimamba", "espnet_mamba.encoder:ConBiMambaEncoder"),
    ("espnet2.tasks.ssl", "encoder_choices", "conbimamba", "espnet_mamba.encoder:ConBiMambaEncoder"),
    ("espnet2.tasks.hubert", "encoder_choices", "conbimamba", "espnet_mamba.encoder:ConBiMambaEncoder"),
    # a pretrained (Mamba-)HuBERT for CTC fine-tuning (raw waveform in, input_size: 1)
    ("espnet2.tasks.asr", "encoder_choices", "hubert_finetune", "espnet_mamba.ssl.finetune:SSLFinetuneEncoder"),
)


def _load(target: str):
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def register_s3prl_upstreams() -> None:
    """Make mamba-mi's S3PRL upstreams (``mamba_hubert_local`` ...) known to S3PRL.

    ESPnet's ``frontend: s3prl`` looks upstream names up in ``s3prl.hub``; importing
    :mod:`s3prl_upstream` adds ours there. Skipped when S3PRL is not installed.
    """
    try:
        import s3prl.hub  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name is not None and e.name.split(".")[0] == "s3prl":
            return
        raise
    import s3prl_upstream

    s3prl_upstream.register()


def register() -> None:
    """Add every entry of :data:`CHOICES` to its ESPnet ``ClassChoices``, and our S3PRL upstreams."""
    for task_module, attribute, name, target in CHOICES:
        choices = getattr(importlib.import_module(task_module), attribute)
        cls = _load(target)
        registered = choices.classes.get(name)
        if registered is not None and registered is not cls:
            raise RuntimeError(
                f"{task_module}.{attribute} already has a different '{name}': {registered}"
            )
        choices.classes[name] = cls
    register_s3prl_upstreams()


register()
