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
)


def _load(target: str):
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def register() -> None:
    """Add every entry of :data:`CHOICES` to its ESPnet ``ClassChoices``."""
    for task_module, attribute, name, target in CHOICES:
        choices = getattr(importlib.import_module(task_module), attribute)
        cls = _load(target)
        registered = choices.classes.get(name)
        if registered is not None and registered is not cls:
            raise RuntimeError(
                f"{task_module}.{attribute} already has a different '{name}': {registered}"
            )
        choices.classes[name] = cls


register()
