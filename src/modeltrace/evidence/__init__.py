"""Evidence methods, one module each, registered by stable kebab-case names.

Built-ins are registered here exactly as plugins are (entry-point group ``modeltrace.evidence``).
The order of registration is the order compare runs them: weight matching first, since
diagnosis and the artifact methods read its rename map.
"""

from __future__ import annotations

from modeltrace.evidence.base import CompareContext, Evidence, EvidenceMethod, Transform
from modeltrace.registry import Registry

METHODS: Registry[type[EvidenceMethod]] = Registry("evidence method", "modeltrace.evidence")

__all__ = ["METHODS", "CompareContext", "Evidence", "EvidenceMethod", "Transform"]
METHODS.register("shared-mistakes", "modeltrace.evidence.behaviour:SharedMistakesMethod")
METHODS.register("output-agreement", "modeltrace.evidence.behaviour:OutputAgreementMethod")
METHODS.register("logprob-similarity", "modeltrace.evidence.logprobs:LogprobSimilarityMethod")
METHODS.register("activation-match", "modeltrace.evidence.representation:ActivationMatchMethod")
METHODS.register("representation-cka", "modeltrace.evidence.representation:RepresentationCKAMethod")
METHODS.register("fixed-tensors", "modeltrace.evidence.fixed_tensors:FixedTensorsMethod")
METHODS.register("weight-match", "modeltrace.evidence.weights_match:WeightMatchMethod")
METHODS.register("weight-identity", "modeltrace.evidence.weights_identity:WeightIdentityMethod")
METHODS.register("weight-permutation", "modeltrace.evidence.weights_permutation:WeightPermutationMethod")
METHODS.register("weight-heads", "modeltrace.evidence.weights_heads:WeightHeadsMethod")
METHODS.register("weight-order", "modeltrace.evidence.weights_order:WeightOrderMethod")
METHODS.register("config-match", "modeltrace.evidence.artifacts_config:ConfigMatchMethod")
METHODS.register("tokenizer-match", "modeltrace.evidence.artifacts_tokenizer:TokenizerMatchMethod")
METHODS.register("code-clone", "modeltrace.evidence.artifacts_code:CodeCloneMethod")
METHODS.register("tensor-names", "modeltrace.evidence.artifacts_names:TensorNamesMethod")
METHODS.register("diagnosis", "modeltrace.evidence.diagnosis:DiagnosisMethod")
METHODS.register("canary-recall", "modeltrace.evidence.behaviour:CanaryRecallMethod")
