"""HuBERT-style self-supervised learning with ESPnet's SSL task.

- :mod:`espnet_mamba.ssl.model`: load a pretrained ``espnet2.tasks.ssl`` checkpoint
  (ConBiMamba or Transformer encoder) with strict checks and extract every layer's
  hidden states.
- :mod:`espnet_mamba.ssl.kmeans`: MFCC or layer features -> MiniBatchKMeans -> label
  files in the format ESPnet's SSL task reads (``python -m espnet_mamba.bin.kmeans``).
- :mod:`espnet_mamba.ssl.finetune`: ``hubert_finetune``, an ESPnet ASR encoder that
  wraps a pretrained model for CTC fine-tuning (CNN frozen, encoder frozen for the
  first updates).
"""
