"""Which components of a multimodal model are shared with A and which are new."""

from __future__ import annotations

from modeltrace.diagnose.components import ComponentEntry, component_of, diagnose_components


def test_component_names() -> None:
    assert component_of("vpm.encoder.layers.0.mlp.fc1.weight") == "vision_tower"
    assert component_of("vison.encoder.layers.0.mlp.fc1.weight") == "vision_tower"
    assert component_of("resampler.attn.in_proj_weight") == "projector"
    assert component_of("multi_modal_projector.linear_1.weight") == "projector"
    assert component_of("llm.model.layers.0.self_attn.q_proj.weight") == "language_model"


def test_shared_new_partial() -> None:
    entries = [ComponentEntry(f"vpm.{i}", "vision_tower", 0.99, 10) for i in range(5)]
    entries += [ComponentEntry(f"resampler.{i}", "projector", s, 10) for i, s in enumerate((0.01, -0.02, 0.0))]
    entries += [ComponentEntry(f"llm.{i}", "language_model", s, 10) for i, s in enumerate((0.9, 0.2, 0.3, 0.4))]
    entries += [ComponentEntry("new_head.weight", "other", None, 5)]
    d = diagnose_components(entries)
    assert d.shared == ("vision_tower",)
    assert set(d.new) == {"projector", "other"}
    assert d.partial == ("language_model",)
    vt = next(c for c in d.components if c.component == "vision_tower")
    assert (vt.n_tensors, vt.n_matched, vt.numel) == (5, 5, 50)
