"""Model builders. Each takes ``num_classes`` (the size of its head) and ``input_shape``
from the data at run time, and its dropout, normalization and initialization from config.

- ``layers``: initialization schemes and normalization layers every model shares.
- ``resnet``: ResNets, for small images (3x3 stem) and torchvision's for large ones.
- ``vit``: vision transformers (torchvision's VisionTransformer, small sizes).
- ``text``: the text transformer (token embedding, pre-norm encoder, pooling).
- ``sequence``: the conv + transformer reader that emits one prediction per time step (CTC).
- ``mlp``: fully connected layers, for tabular features.
"""

from trainkit.models import mlp, resnet, sequence, text, vit  # noqa: F401  (registers models)
from trainkit.models.layers import Init, group_count, initialize

__all__ = ["Init", "group_count", "initialize"]
