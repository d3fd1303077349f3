"""The local backend on a tiny image-text model (LLaVA layout: CLIP vision tower + Llama), random weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("PIL")

from modeltrace.backends.base import Request
from modeltrace.backends.local import TransformersBackend
from modeltrace.errors import BackendError


def write_tiny_llava(path: Path, seed: int = 0) -> Path:
    """A 32x32-pixel, 8-pixel-patch CLIP tower feeding a 2-layer Llama; words w0..w59 plus <image>."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    try:  # without torchvision transformers 5 picks the PIL image processor anyway (and says so)
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor as ImageProcessor

    torch.manual_seed(seed)
    words = ["<unk>", "<s>", "</s>", "<image>"] + [f"w{i}" for i in range(60)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("<image>", behavior="isolated"),
                                                 pre_tokenizers.Whitespace()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   extra_special_tokens={"image_token": "<image>"})
    vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=1, num_attention_heads=4, projection_dim=32)
    text = LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                       bos_token_id=1, eos_token_id=2)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=3, vision_feature_layer=-1,
                      vision_feature_select_strategy="default")
    LlavaForConditionalGeneration(cfg).save_pretrained(path)
    images = ImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    # 16 patches + CLS, and the "default" strategy drops CLS: 16 <image> tokens per image
    LlavaProcessor(image_processor=images, tokenizer=fast, patch_size=8, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1).save_pretrained(path)
    return path


def write_image(path: Path, seed: int) -> str:
    from PIL import Image

    pixels = (np.random.default_rng(seed).random((40, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llava(tmp_path_factory.mktemp("tinyvlm") / "m")


@pytest.fixture(scope="module")
def backend(tiny_vlm: Path) -> TransformersBackend:
    return TransformersBackend(tiny_vlm, threads=1)


def test_image_request_is_deterministic(backend: TransformersBackend, tmp_path: Path) -> None:
    img = write_image(tmp_path / "a.png", 1)
    req = Request(prompt="w1 w2", images=(img,), max_tokens=4, top_logprobs=3)
    a, b = backend.generate([req]), backend.generate([req])
    assert a[0].text == b[0].text and a[0].top_logprobs == b[0].top_logprobs
    assert len(a[0].tokens) == len(a[0].top_logprobs) >= 1
    top = a[0].top_logprobs[0]
    assert len(top) == 3 and all(v <= 0 for v in top.values())
    sampled = Request(prompt="w1", images=(img,), max_tokens=6, temperature=1.5, seed=7)
    assert backend.generate([sampled])[0].text == backend.generate([sampled])[0].text


def test_different_images_give_different_next_tokens(backend: TransformersBackend, tmp_path: Path) -> None:
    first = [backend.generate([Request(prompt="<image> w1", images=(write_image(tmp_path / f"{s}.png", s),),
                                       max_tokens=1, top_logprobs=5)])[0].top_logprobs[0]
             for s in (1, 2)]
    assert first[0] != first[1]


def test_text_only_request_on_the_image_text_model(backend: TransformersBackend) -> None:
    r = backend.generate([Request(prompt="w1 w2 w3", max_tokens=3, top_logprobs=2)])
    assert len(r[0].tokens) >= 1 and len(r[0].top_logprobs[0]) == 2
    lp = backend.next_token_logprobs(["w1 w2"])
    assert lp.shape == (1, 64) and np.isclose(np.exp(lp).sum(), 1.0, atol=1e-4)


def test_missing_image_names_the_file(backend: TransformersBackend, tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(BackendError, match=f"^{missing}: image file not found$"):
        backend.generate([Request(prompt="w1", images=(str(missing),))])


def test_unreadable_image_names_the_file(backend: TransformersBackend, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(BackendError, match=f"^{bad}: not a readable image"):
        backend.generate([Request(prompt="w1", images=(str(bad),))])


def test_too_many_image_placeholders_is_a_backend_error(backend: TransformersBackend, tmp_path: Path) -> None:
    img = write_image(tmp_path / "a.png", 1)
    with pytest.raises(BackendError, match="the processor could not prepare 1 image"):
        backend.generate([Request(prompt="<image> <image> w1", images=(img,))])


def test_text_model_still_refuses_images(tmp_path: Path) -> None:
    from tinylm import write_tiny_llama

    be = TransformersBackend(write_tiny_llama(tmp_path / "m"), threads=1)
    with pytest.raises(BackendError, match="images are not supported by the local text backend"):
        be.generate([Request(prompt="w1", images=(write_image(tmp_path / "a.png", 1),))])


def test_image_text_model_asking_for_its_own_code_is_refused(tiny_vlm: Path, tmp_path: Path) -> None:
    import json

    cfg = json.loads((tiny_vlm / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForImageTextToText": "modeling_evil.Evil"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BackendError, match="asks for its own code"):
        TransformersBackend(tmp_path)
