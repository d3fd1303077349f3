"""Model configs normalized across naming schemes, with the fields that single out a family or a model.

`hidden_size`, `d_model`, `n_embd` and GGUF's `<arch>.embedding_length` are one quantity; this
module maps each naming scheme onto one vocabulary so two configs compare field by field.
A field that almost no architecture defines (MiniCPM-V's `query_num`, `slice_mode`) is a
strong signal when two models share it; how rare a field is comes from a table counted over
the configuration classes of `transformers` (data/config_key_counts.json).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modeltrace.errors import FormatError

if TYPE_CHECKING:
    from modeltrace.model import Model

# normalized name -> the names configs use for it (HF config.json spellings)
ALIASES: dict[str, tuple[str, ...]] = {
    "hidden_size": ("hidden_size", "d_model", "n_embd", "dim", "model_dim", "embed_dim", "hidden_dim"),
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "encoder_layers"),
    "num_heads": ("num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads"),
    "num_kv_heads": ("num_key_value_heads", "n_kv_heads", "multi_query_group_num", "num_kv_heads"),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim", "d_ff", "ffn_hidden_size",
                          "encoder_ffn_dim", "mlp_dim"),
    "vocab_size": ("vocab_size", "n_vocab", "padded_vocab_size"),
    "max_positions": ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_seq_len",
                      "max_sequence_length"),
    "rope_theta": ("rope_theta", "rotary_emb_base", "rope_base"),
    "norm_eps": ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "layernorm_epsilon", "norm_eps"),
    "head_dim": ("head_dim", "kv_channels"),
    "activation": ("hidden_act", "activation_function", "hidden_activation", "activation"),
    "num_experts": ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"),
    "experts_per_token": ("num_experts_per_tok", "moe_top_k", "num_selected_experts"),
    "tie_embeddings": ("tie_word_embeddings",),
    "sliding_window": ("sliding_window",),
    "type_vocab_size": ("type_vocab_size",),
    "image_size": ("image_size",),
    "patch_size": ("patch_size",),
}
# GGUF metadata: normalized name -> key after "<arch>."
GGUF_KEYS: dict[str, str] = {
    "hidden_size": "embedding_length", "num_layers": "block_count", "num_heads": "attention.head_count",
    "num_kv_heads": "attention.head_count_kv", "intermediate_size": "feed_forward_length",
    "max_positions": "context_length", "rope_theta": "rope.freq_base", "head_dim": "attention.key_length",
    "num_experts": "expert_count", "experts_per_token": "expert_used_count", "vocab_size": "vocab_size",
    "sliding_window": "attention.sliding_window",
}
GGUF_EPS = ("attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon")
SUBCONFIGS = ("text_config", "vision_config", "audio_config", "llm_config", "language_config", "encoder",
              "decoder")

# Fields in nearly every config.json (written by the base class or by training scripts).
GENERIC_KEYS = frozenset({
    "architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "auto_map", "_name_or_path",
    "name_or_path", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "use_cache", "return_dict", "output_hidden_states", "output_attentions", "torchscript", "is_encoder_decoder",
    "is_decoder", "add_cross_attention", "tie_encoder_decoder", "chunk_size_feed_forward", "problem_type",
    "id2label", "label2id", "tokenizer_class", "prefix", "task_specific_params", "finetuning_task",
    "initializer_range", "quantization_config", "pruned_heads", "bad_words_ids", "max_length", "min_length",
    "do_sample", "num_beams", "temperature", "top_k", "top_p", "repetition_penalty", "length_penalty",
    "no_repeat_ngram_size", "early_stopping", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "typical_p",
    "encoder_no_repeat_ngram_size", "num_beam_groups", "diversity_penalty", "tf_legacy_loss",
    "use_bfloat16", "cross_attention_hidden_size", "_attn_implementation", "_commit_hash", "rope_scaling",
    "rope_parameters", "attention_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob", "dropout",
    "gradient_checkpointing", "pretraining_tp", "attention_bias", "mlp_bias", "max_window_layers",
    "use_sliding_window", "classifier_dropout", "position_embedding_type",
    # written by training and export tools, not by an architecture
    "unsloth_version", "unsloth_fixed", "attn_implementation", "use_flash_attn", "use_flash_attention_2",
    "fp16", "bf16", "quantization", "transformers.js_config", "model_max_length", "use_return_dict",
    "output_past", "gradient_checkpointing_kwargs", "torch_compile",
})
RARE_MAX_CLASSES = 1  # a field defined by at most this many transformers config classes is "peculiar"
MAX_VALUE_CHARS = 200
MAX_AUTO_MAP = 64  # auto_map entries kept; more are refused (transformers defines a handful of Auto classes)
# normalized fields that are counts or sizes: a value must be a number or null, else the file is malformed
NUMERIC_FIELDS = frozenset({"hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                            "vocab_size", "max_positions", "rope_theta", "norm_eps", "head_dim", "num_experts",
                            "experts_per_token", "type_vocab_size"})


@dataclass(frozen=True)
class ConfigInfo:
    """A model's config as data: the raw fields (flattened), the normalized hyperparameters, the family."""

    source: str
    raw: dict[str, Any]  # flattened: "vision_config.image_size"
    normalized: dict[str, Any]
    family: str | None
    architectures: tuple[str, ...] = ()
    auto_map: dict[str, Any] = field(default_factory=dict)
    name_or_path: str | None = None


def _flatten(cfg: Mapping[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k in SUBCONFIGS and depth < 3:
            out.update(_flatten(v, key + ".", depth + 1))
        else:
            out[key] = v
    return out


def _scalar(v: Any) -> Any:
    if isinstance(v, (bool, int, float)) or v is None:
        return v
    if isinstance(v, str):
        return v[:MAX_VALUE_CHARS]
    return _preview(v)


def _preview(v: Any) -> str:
    """The first MAX_VALUE_CHARS characters of the JSON text of a list or object, made without
    serialising the rest: a config value may be a 60 MB list or nested a thousand levels deep, and
    this costs O(MAX_VALUE_CHARS) whatever the value (keys in sorted order, as json.dumps sort_keys)."""
    out: list[str] = []
    size = 0

    def put(text: str) -> bool:
        nonlocal size
        out.append(text)
        size += len(text)
        return size < MAX_VALUE_CHARS

    def walk(x: Any, depth: int) -> bool:
        if depth > 32:
            return put("...")
        if isinstance(x, dict):
            if not put("{"):
                return False
            for i, k in enumerate(sorted(x) if len(x) <= 1000 else x):
                if (i and not put(", ")) or not put(json.dumps(str(k)[:MAX_VALUE_CHARS]) + ": ") \
                        or not walk(x[k], depth + 1):
                    return False
            return put("}")
        if isinstance(x, list):
            if not put("["):
                return False
            for i, y in enumerate(x):
                if (i and not put(", ")) or not walk(y, depth + 1):
                    return False
            return put("]")
        if isinstance(x, str):
            return put(json.dumps(x[:MAX_VALUE_CHARS]))
        return put(json.dumps(x) if isinstance(x, (bool, int, float)) or x is None else json.dumps(str(x)))

    walk(v, 0)
    return "".join(out)[:MAX_VALUE_CHARS]


def _check_types(cfg: Mapping[str, Any], flat: Mapping[str, Any], path: Path | str) -> None:
    """The fields modeltrace reads must have their JSON types: a clear error of the file, not a crash later."""
    for key, want in (("model_type", str), ("_name_or_path", str), ("name_or_path", str), ("auto_map", dict),
                      ("architectures", list)):
        v = cfg.get(key)
        if v is not None and not isinstance(v, want):
            raise FormatError(path, f"{key} is {type(v).__name__}, expected {_JSON_TYPE[want]}")
    am = cfg.get("auto_map")
    if isinstance(am, dict):
        if len(am) > MAX_AUTO_MAP:
            raise FormatError(path, f"auto_map has {len(am)} entries, over the {MAX_AUTO_MAP} cap")
        for k, v in am.items():
            if not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, (str, type(None))) for x in v))):
                raise FormatError(path, f"auto_map[{k[:60]!r}] is {type(v).__name__}, expected a string or a "
                                  "list of strings")
    for prefix in ("", *(sub + "." for sub in SUBCONFIGS)):
        for name in NUMERIC_FIELDS:
            for alias in ALIASES[name]:
                v = flat.get(prefix + alias)
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                    raise FormatError(path, f"{prefix + alias} is {type(v).__name__}, expected a number")


_JSON_TYPE = {str: "a string", dict: "an object", list: "a list"}


def normalize(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Normalized hyperparameters of a flattened HF config; sub-config values get their prefix."""
    out: dict[str, Any] = {}
    for prefix in ("", *(s + "." for s in SUBCONFIGS)):
        for name, aliases in ALIASES.items():
            for alias in aliases:
                if prefix + alias in flat and flat[prefix + alias] is not None:
                    key = prefix + name
                    out.setdefault(key, _scalar(flat[prefix + alias]))
                    break
    # multimodal configs hold the language model in text_config: lift it when the top level lacks it
    for name in ALIASES:
        for sub in ("text_config.", "llm_config.", "language_config."):
            if name not in out and sub + name in out:
                out[name] = out[sub + name]
    return out


def from_gguf(meta: Mapping[str, Any], source: str) -> ConfigInfo | None:
    """Config from GGUF key-values (`general.architecture` and `<arch>.*`)."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        return None
    norm: dict[str, Any] = {}
    for name, key in GGUF_KEYS.items():
        v = meta.get(f"{arch}.{key}")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            norm[name] = v
    for key in GGUF_EPS:
        v = meta.get(f"{arch}.{key}")
        if isinstance(v, float):
            norm.setdefault("norm_eps", v)
    tokens = meta.get("tokenizer.ggml.tokens")
    if "vocab_size" not in norm:
        if isinstance(tokens, list):
            norm["vocab_size"] = len(tokens)
        elif isinstance(tokens, dict) and isinstance(tokens.get("length"), int):
            norm["vocab_size"] = tokens["length"]
    raw = {k: _scalar(v) for k, v in meta.items() if k.startswith(("general.", f"{arch}."))
           and not isinstance(v, (list, dict))}
    general_name = meta.get("general.name")
    return ConfigInfo(source=source, raw=raw, normalized=norm, family=arch,
                      name_or_path=general_name[:MAX_VALUE_CHARS] if isinstance(general_name, str) else None)


def from_dict(cfg: Mapping[str, Any], source: str, path: Path | None = None) -> ConfigInfo:
    """A config.json as ConfigInfo; a field of the wrong JSON type is a FormatError of `path` (or `source`)."""
    flat = _flatten(cfg)
    _check_types(cfg, flat, path if path is not None else source)
    archs = cfg.get("architectures")
    am = cfg.get("auto_map")
    nop = cfg.get("_name_or_path", cfg.get("name_or_path"))
    family = cfg.get("model_type")
    return ConfigInfo(source=source, raw={k: _scalar(v) for k, v in flat.items()}, normalized=normalize(flat),
                      family=family[:MAX_VALUE_CHARS] if isinstance(family, str) else None,
                      architectures=tuple(a[:MAX_VALUE_CHARS] for a in archs if isinstance(a, str))
                      if isinstance(archs, list) else (),
                      auto_map=am if isinstance(am, dict) else {},
                      name_or_path=nop[:MAX_VALUE_CHARS] if isinstance(nop, str) and nop else None)


def read_config(model: Model) -> ConfigInfo | None:
    """config.json when present, else the GGUF header; None when the model has neither."""
    cfg = model.config
    if cfg is not None:
        return from_dict(cfg, "config.json", model.file("config.json"))
    ggufs = [p for p in model.weight_files if p.suffix == ".gguf"]
    if ggufs:
        return from_gguf(model.source.metadata(), ggufs[0].name)
    return None


# --- rarity of config fields ---------------------------------------------------------------------

@lru_cache(maxsize=1)
def key_counts() -> dict[str, int]:
    """How many transformers configuration classes define each field (package data)."""
    text = resources.files("modeltrace.artifacts").joinpath("data/config_key_counts.json").read_text("utf-8")
    return {str(k): int(v) for k, v in json.loads(text)["counts"].items()}


def is_peculiar(flat_key: str) -> bool:
    """A field (its last path part) that at most one transformers config class defines."""
    key = flat_key.rsplit(".", 1)[-1]
    if key in GENERIC_KEYS or key.startswith("_"):
        return False
    return key_counts().get(key, 0) <= RARE_MAX_CLASSES


def count_config_keys(transformers_models: Path) -> dict[str, int]:
    """Count, over every configuration_*.py of transformers, the config classes defining each field.

    Fields are class-level annotated attributes and `__init__` parameters of classes whose name
    ends in "Config". Files are parsed with `ast`, never imported.
    """
    counts: dict[str, int] = {}
    for path in sorted(transformers_models.glob("*/configuration_*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef) or not node.name.endswith("Config"):
                continue
            keys: set[str] = set()
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    keys.add(item.target.id)
                elif isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    keys.update(a.arg for a in item.args.args + item.args.kwonlyargs if a.arg != "self")
            for k in keys:
                counts[k] = counts.get(k, 0) + 1
    return counts


# --- references to other models -------------------------------------------------------------------

_MODULE = re.compile(r"^([A-Za-z_][\w-]*(?:--[\w.-]+)?)(?:\.([A-Za-z_]\w*))+$")


def auto_map_repos(auto_map: Mapping[str, Any]) -> list[str]:
    """Repositories that `auto_map` entries load code from ("org/repo--modeling_x.Class" -> org/repo)."""
    out: list[str] = []
    for val in auto_map.values():
        for t in (val if isinstance(val, list) else [val])[:8]:
            if isinstance(t, str) and "--" in t:
                repo = t.split("--", 1)[0][:MAX_VALUE_CHARS]
                if repo not in out:
                    out.append(repo)
    return out


def auto_map_modules(auto_map: Mapping[str, Any]) -> dict[str, list[str]]:
    """Module names that `auto_map` entries point at ("org/repo--modeling_x.Class" -> modeling_x)."""
    out: dict[str, list[str]] = {}
    for key, val in auto_map.items():
        targets = val if isinstance(val, list) else [val]
        for t in targets[:8]:
            if not isinstance(t, str):
                continue
            ref = t.split("--", 1)[-1]  # "org/repo--modeling_x.Class"
            module = ref.rsplit(".", 1)[0] if "." in ref else ref
            out.setdefault(module[:MAX_VALUE_CHARS], []).append(f"{key}: {t[:MAX_VALUE_CHARS]}")
    return out
