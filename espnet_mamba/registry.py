"""The one place where mamba-mi's classes join ESPnet's task choices.

ESPnet has no plugin mechanism: each task keeps its choices in module-level
``ClassChoices`` objects (e.g. ``espnet2.tasks.asr.encoder_choices``). After
:func:`register` has added our classes there, ``--encoder conbimamba`` (or
``encoder: conbimamba`` in a config) works, and ``ASRTask.build_model_from_file``
loads a model trained that way. Importing this module changes nothing; the entry
points ``python -m espnet_mamba.bin.*`` call :func:`register`.

Example:
    >>> from espnet_mamba.registry import register
    >>> register()
    >>> from espnet2.tasks.asr import ASRTask
    >>> model, train_args = ASRTask.build_model_from_file(config, checkpoint)
"""

import importlib

__all__ = ["CHOICES", "register"]

# (ESPnet task module, choices attribute, choice name, "module:Class" of ours)
CHOICES = (
    ("espnet2.tasks.asr", "encoder_choices", "conbimamba", "espnet_mamba.encoder:ConBiMambaEncoder"),
    ("espnet2.tasks.ssl", "encoder_choices", "conbimamba", "espnet_mamba.encoder:ConBiMambaEncoder"),
    ("espnet2.tasks.hubert", "encoder_choices", "conbimamba", "espnet_mamba.encoder:ConBiMambaEncoder"),
    # the Transformer HuBERT baseline in HuBERT's layout (x + GELU(conv(x)) before the layers)
    ("espnet2.tasks.ssl", "encoder_choices", "hubert_transformer",
     "espnet_mamba.ssl.transformer_encoder:HubertTransformerEncoder"),
    ("espnet2.tasks.hubert", "encoder_choices", "hubert_transformer",
     "espnet_mamba.ssl.transformer_encoder:HubertTransformerEncoder"),
    # a pretrained (Mamba-)HuBERT for CTC fine-tuning (raw waveform in, input_size: 1)
    ("espnet2.tasks.asr", "encoder_choices", "hubert_finetune", "espnet_mamba.ssl.finetune:SSLFinetuneEncoder"),
)


def _load(target: str):
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def register() -> None:
    """Add every entry of :data:`CHOICES` to its ESPnet ``ClassChoices`` (idempotent).

    Raises:
        RuntimeError: A choice of that name already holds another class.
    """
    for task_module, attribute, name, target in CHOICES:
        choices = getattr(importlib.import_module(task_module), attribute)
        cls = _load(target)
        registered = choices.classes.get(name)
        if registered is not None and registered is not cls:
            raise RuntimeError(
                f"{task_module}.{attribute} already has a different '{name}': {registered}"
            )
        choices.classes[name] = cls
