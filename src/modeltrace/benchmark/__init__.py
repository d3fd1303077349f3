"""The lineage benchmark: a zoo of tiny models with known ancestry, and the runner that scores methods on it.

`zoo` builds the models and the ground-truth manifest; the runner reads that manifest and measures every
evidence method and the combined verdict on each labelled pair.
"""

from __future__ import annotations
