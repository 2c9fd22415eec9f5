"""Deep Compression into a file: ``pack(model, config)`` → ``.dsz``, ``unpack(path)`` → the
same tensors, bit for bit (Han et al., "Deep Compression", ICLR 2016).

- :mod:`.compress`: pruning with fine-tuning and trained k-means weight sharing;
- :mod:`.huffman`: canonical Huffman codes (via ``bitarray``);
- :mod:`.container`: the versioned, checksummed container (``docs/FORMAT.md``);
- :mod:`.api`: the ``pack`` / ``unpack`` verbs.
"""

from __future__ import annotations

from .api import PackResult, UnpackResult, pack, tensors_equal, unpack
from .config import DeepCompressionConfig, PackConfig

__all__ = ["DeepCompressionConfig", "PackConfig", "PackResult", "UnpackResult", "pack", "tensors_equal", "unpack"]
