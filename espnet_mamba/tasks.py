"""``import espnet_mamba.tasks`` registers what the entry points register.

The name that README's "load a model with ESPnet's own loader" example imports: our
classes in ESPnet's task choices (:func:`espnet_mamba.registry.register`) and our
S3PRL upstreams (:func:`s3prl_upstream.register`, when S3PRL is installed). New code
calls :func:`espnet_mamba.bin.register` (both) or one of the two.
"""

from espnet_mamba.bin import register

register()
