"""How was B made from A? Estimators that read pairs of aligned tensors and name the transform.

Each module answers one question on plain numpy arrays (B's tensors already aligned to A's) and
returns a frozen dataclass with its estimates and the reason: `cast` (identical or a dtype round
trip), `quantize` (grid, scheme, error), `noise` (added Gaussian noise, sigma relative to A),
`finetune` (relative change per layer, low-rank changes as LoRA merges), `layers` (dropped,
duplicated, reordered layers from a correspondence matrix), `merge` (mixing coefficients, slerp,
task arithmetic, share explained), `vocab` (extended, pruned, reordered vocabularies), `upcycle`
(dense MLP into experts) and `components` (which parts of a multimodal model are shared).
"""

from __future__ import annotations

from modeltrace.diagnose.cast import CastDiagnosis, detect_cast
from modeltrace.diagnose.components import (
    ComponentDiagnosis,
    ComponentEntry,
    component_of,
    diagnose_components,
)
from modeltrace.diagnose.finetune import (
    FinetuneDiagnosis,
    TensorChange,
    diagnose_finetune,
    effective_rank,
    tensor_change,
)
from modeltrace.diagnose.layers import LayerDiagnosis, diagnose_layers
from modeltrace.diagnose.merge import (
    MergeFit,
    ShareExplained,
    TaskArithmeticFit,
    merge_coefficients,
    share_explained,
    task_arithmetic,
)
from modeltrace.diagnose.noise import NoiseDiagnosis, TensorNoise, diagnose_noise, tensor_noise
from modeltrace.diagnose.quantize import QuantDiagnosis, detect_quantization
from modeltrace.diagnose.upcycle import UpcycleDiagnosis, diagnose_upcycle
from modeltrace.diagnose.vocab import VocabDiagnosis, diagnose_vocab

__all__ = [
    "CastDiagnosis", "ComponentDiagnosis", "ComponentEntry", "FinetuneDiagnosis", "LayerDiagnosis", "MergeFit",
    "NoiseDiagnosis", "QuantDiagnosis", "ShareExplained", "TaskArithmeticFit", "TensorChange", "TensorNoise",
    "UpcycleDiagnosis", "VocabDiagnosis", "component_of", "detect_cast", "detect_quantization",
    "diagnose_components", "diagnose_finetune", "diagnose_layers", "diagnose_noise", "diagnose_upcycle",
    "diagnose_vocab", "effective_rank", "merge_coefficients", "share_explained", "task_arithmetic",
    "tensor_change", "tensor_noise",
]
