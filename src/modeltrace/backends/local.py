"""Local models through `transformers` on the CPU: greedy or sampled text, next-token log-probs, hidden states.

Image-text models (a config with a `vision_config`, or an image-text-to-text architecture that
transformers implements) are loaded with `AutoProcessor` + `AutoModelForImageTextToText` and answer
requests that carry images; text-only models keep the plain causal-LM path.

Only architectures that transformers itself implements are loaded: a model folder whose config
asks for its own code (`auto_map`) is refused, since nothing from a model is ever executed
(`trust_remote_code=False`, `local_files_only=True` always).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modeltrace.backends.base import Backend, Request, Response
from modeltrace.errors import BackendError
from modeltrace.model import load_json


class TransformersBackend(Backend):
    """A local Hugging Face folder run with transformers (causal LMs; encoders for hidden states)."""

    name = "transformers"

    def __init__(self, path: str | Path, *, batch_size: int = 8, threads: int | None = None) -> None:
        self.path = Path(path)
        cfg_path = self.path / "config.json"
        if not cfg_path.is_file():
            raise BackendError(f"{self.path}: no config.json; a local backend needs a Hugging Face model folder")
        cfg = load_json(cfg_path)
        if isinstance(cfg, dict) and cfg.get("auto_map"):
            raise BackendError(f"{cfg_path}: the model asks for its own code (auto_map); modeltrace never runs "
                               "a model's code", hint="serve it elsewhere and use an OpenAI-compatible endpoint")
        self.batch_size = batch_size
        self.threads = threads
        self._model: Any = None
        self._tok: Any = None
        self._is_causal = True
        self._cfg: dict[str, Any] = cfg if isinstance(cfg, dict) else {}
        self._processor: Any = None  # set only for image-text models

    @property
    def identity(self) -> str:
        return f"local:{self.path.resolve()}"

    def _load(self) -> None:
        if self._model is not None:
            return
        try:
            import torch
            from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise BackendError("running local models needs the [behaviour] extra "
                               "(pip install 'modeltrace[behaviour]')") from exc
        if self.threads:
            torch.set_num_threads(self.threads)
        kw: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
        if _is_image_text(self._cfg):
            self._load_image_text(kw)
            return
        try:
            self._tok = AutoTokenizer.from_pretrained(str(self.path), **kw)
            try:
                self._model = AutoModelForCausalLM.from_pretrained(str(self.path), **kw)
            except ValueError:
                self._model = AutoModel.from_pretrained(str(self.path), **kw)
                self._is_causal = False
        except Exception as exc:  # transformers raises many kinds: one error naming the folder
            raise BackendError(f"{self.path}: transformers could not load it ({type(exc).__name__}: {exc})") from exc
        self._model.eval()
        if self._tok.pad_token is None:
            self._tok.pad_token = self._tok.eos_token or self._tok.unk_token
        self._tok.padding_side = "left"

    def _load_image_text(self, kw: dict[str, Any]) -> None:
        from transformers import AutoModelForImageTextToText
        from transformers import AutoProcessor as _AutoProcessor

        auto_processor: Any = _AutoProcessor  # its from_pretrained is untyped
        try:
            processor = auto_processor.from_pretrained(str(self.path), **kw)
            model = AutoModelForImageTextToText.from_pretrained(str(self.path), **kw)
        except Exception as exc:  # transformers raises many kinds: one error naming the folder
            raise BackendError(f"{self.path}: transformers could not load it as an image-text model "
                               f"({type(exc).__name__}: {exc})") from exc
        tok = getattr(processor, "tokenizer", None)
        if tok is None:
            raise BackendError(f"{self.path}: the image-text processor has no tokenizer")
        self._processor, self._tok, self._model = processor, tok, model
        self._model.eval()
        if self._tok.pad_token is None:
            self._tok.pad_token = self._tok.eos_token or self._tok.unk_token
        self._tok.padding_side = "left"

    def generate(self, requests: Sequence[Request],
                 on_response: Callable[[int, Response], None] | None = None) -> list[Response]:
        self._load()
        if not self._is_causal:
            raise BackendError(f"{self.path}: not a causal language model; it can give hidden states only")
        import torch

        out: list[Response | None] = [None] * len(requests)
        # greedy requests (log-probability queries, cloze answers, continuations): left-padded batches of
        # equal length, the whole batch decoded step by step
        greedy = sorted((i for i, r in enumerate(requests) if self._batchable(r)),
                        key=lambda i: requests[i].max_tokens)
        for start in range(0, len(greedy), self.batch_size):
            idx = greedy[start:start + self.batch_size]
            for i, resp in zip(idx, self._greedy_batch([requests[i] for i in idx], torch)):
                out[i] = resp
                if on_response:
                    on_response(i, resp)
        for i, req in enumerate(requests):  # the rest one at a time: sampling seeds stay exact per request
            if out[i] is None:
                resp = self._generate_one(req, torch)
                out[i] = resp
                if on_response:
                    on_response(i, resp)
        return [r for r in out if r is not None]

    def _batchable(self, req: Request) -> bool:
        return not req.images and not req.temperature and self._processor is None and req.max_tokens >= 1

    def _greedy_batch(self, reqs: Sequence[Request], torch: Any) -> list[Response]:
        """Greedy decoding of left-padded prompts together; each row stops at its own length or end token."""
        enc = self._tok([self._prompt_text(r) for r in reqs], return_tensors="pt", padding=True)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        eos = self._tok.eos_token_id
        new_ids: list[list[int]] = [[] for _ in reqs]
        tops: list[list[dict[str, float]]] = [[] for _ in reqs]
        done = [False] * len(reqs)
        for _ in range(max(r.max_tokens for r in reqs)):
            logp = self._forward_last(ids, mask, torch)
            nxt = torch.argmax(logp, dim=-1)
            for j, req in enumerate(reqs):
                if done[j]:
                    continue
                tok = int(nxt[j])
                if req.top_logprobs:
                    tops[j].append(self._top_table(logp[j], req.top_logprobs, torch))
                new_ids[j].append(tok)
                done[j] = len(new_ids[j]) >= req.max_tokens or (eos is not None and tok == eos)
            if all(done):
                break
            ids = torch.cat([ids, nxt.unsqueeze(1).to(ids.dtype)], dim=1)
            mask = torch.cat([mask, torch.ones((len(reqs), 1), dtype=mask.dtype)], dim=1)
        out = []
        for req, row, top in zip(reqs, new_ids, tops):
            text = self._tok.decode(row, skip_special_tokens=True)
            for stop in req.stop:
                if stop in text:
                    text = text[: text.index(stop)]
            out.append(Response(text=text, tokens=tuple(self._tok.decode([t]) for t in row),
                                top_logprobs=tuple(top), finish_reason="stop"))
        return out

    def _last_logprobs(self, texts: Sequence[str], torch: Any) -> Any:
        """(len(texts), vocab) next-token log-probabilities after each text, in one padded forward."""
        enc = self._tok(list(texts), return_tensors="pt", padding=True)
        return self._forward_last(enc["input_ids"], enc["attention_mask"], torch)

    def _forward_last(self, ids: Any, mask: Any, torch: Any) -> Any:
        """Log-probabilities of the next token after each left-padded row (positions from its first real token)."""
        kw: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
        if self._takes_positions():
            kw["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = self._model(**kw).logits[:, -1].float()
        return torch.log_softmax(logits, dim=-1)

    def _takes_positions(self) -> bool:
        import inspect

        try:
            return "position_ids" in inspect.signature(self._model.forward).parameters
        except (TypeError, ValueError):
            return False

    def _top_table(self, logp: Any, k: int, torch: Any) -> dict[str, float]:
        """The k most likely next tokens; two ids that decode alike keep the larger log-probability."""
        v, i = torch.topk(logp, min(k, int(logp.shape[-1])))
        top: dict[str, float] = {}
        for tok_id, x in zip(i.tolist(), v.tolist()):
            top.setdefault(self._tok.decode([int(tok_id)]), float(x))
        return top

    def _prompt_text(self, req: Request) -> str:
        if req.mode == "chat" and req.messages:
            if getattr(self._tok, "chat_template", None):
                msgs = [{"role": r, "content": c} for r, c in req.messages]
                return str(self._tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
            return "\n".join(c for _, c in req.messages)
        return req.prompt

    def _generate_one(self, req: Request, torch: Any) -> Response:
        if req.images:
            if self._processor is None:
                raise BackendError(f"{self.path}: images are not supported by the local text backend")
            return self._generate_with_images(req, torch)
        enc = self._tok(self._prompt_text(req), return_tensors="pt")
        return self._decode(req, enc["input_ids"], lambda cur: self._model(input_ids=cur, use_cache=False), torch)

    def _generate_with_images(self, req: Request, torch: Any) -> Response:
        images = [_open_image(p) for p in req.images]
        try:
            enc = self._processor(images=images, text=self._image_prompt_text(req, len(images)),
                                  return_tensors="pt")
        except Exception as exc:  # processors raise many kinds: one error naming the folder
            raise BackendError(f"{self.path}: the processor could not prepare {len(images)} image(s) "
                               f"with this prompt ({type(exc).__name__}: {exc})") from exc
        ids = enc["input_ids"]
        # inputs with one entry per token (attention mask, token types) grow with the sequence;
        # the others (pixel values, image sizes) stay as the processor made them
        per_token = {k: v for k, v in enc.items()
                     if k != "input_ids" and hasattr(v, "shape") and tuple(v.shape) == tuple(ids.shape)}
        fixed = {k: v for k, v in enc.items() if k != "input_ids" and k not in per_token}

        def forward(cur: Any) -> Any:
            extra = cur.shape[1] - ids.shape[1]
            grown = {k: torch.cat([v, torch.full((1, extra), 1 if k == "attention_mask" else 0,
                                                 dtype=v.dtype)], dim=1) if extra else v
                     for k, v in per_token.items()}
            try:
                return self._model(input_ids=cur, **grown, **fixed, use_cache=False)
            except Exception as exc:  # a model/processor mismatch surfaces here: name the folder
                raise BackendError(f"{self.path}: the image-text model failed on this request "
                                   f"({type(exc).__name__}: {exc})") from exc

        return self._decode(req, ids, forward, torch)

    def _image_prompt_text(self, req: Request, n_images: int) -> str:
        """The prompt with one image placeholder per image, unless the caller already placed them."""
        token = str(getattr(self._processor, "image_token", None) or "<image>")
        if req.mode == "chat" and req.messages and getattr(self._processor, "chat_template", None):
            msgs: list[dict[str, Any]] = []
            placed = False
            for role, content in req.messages:
                parts: list[dict[str, str]] = []
                if role == "user" and not placed:
                    parts += [{"type": "image"}] * n_images
                    placed = True
                parts.append({"type": "text", "text": content})
                msgs.append({"role": role, "content": parts})
            return str(self._processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
        text = self._prompt_text(req)
        if token in text:
            return text
        return token * n_images + ("\n" if text else "") + text

    def _decode(self, req: Request, ids: Any, forward: Callable[[Any], Any], torch: Any) -> Response:
        gen = torch.Generator().manual_seed(req.seed if req.seed is not None else 0)
        tokens: list[str] = []
        tops: list[dict[str, float]] = []
        new_ids: list[int] = []
        cur = ids
        with torch.no_grad():
            # the whole sequence is re-run each step: slower than a KV cache, but stable across
            # transformers versions, and local models here are small
            for _ in range(req.max_tokens):
                logits = forward(cur).logits[0, -1].float()
                logp = torch.log_softmax(logits, dim=-1)
                if req.temperature and req.temperature > 0:
                    probs = torch.softmax(logits / req.temperature, dim=-1)
                    nxt = int(torch.multinomial(probs, 1, generator=gen))
                else:
                    nxt = int(torch.argmax(logits))
                if req.top_logprobs:
                    tops.append(self._top_table(logp, req.top_logprobs, torch))
                tokens.append(self._tok.decode([nxt]))
                new_ids.append(nxt)
                if self._tok.eos_token_id is not None and nxt == self._tok.eos_token_id:
                    break
                cur = torch.cat([cur, torch.tensor([[nxt]])], dim=1)
        text = self._tok.decode(new_ids, skip_special_tokens=True)
        for s in req.stop:
            if s in text:
                text = text[: text.index(s)]
        return Response(text=text, tokens=tuple(tokens), top_logprobs=tuple(tops), finish_reason="stop")

    def hidden_states(self, texts: Sequence[str], max_length: int = 64) -> list[np.ndarray]:
        """Per layer (embeddings first), an array (n_texts, hidden) of mean-pooled hidden states."""
        self._load()
        import torch

        layers: list[list[np.ndarray]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start:start + self.batch_size])
            enc = self._tok(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
            kw = dict(enc)
            if self._takes_positions():  # left padding: count positions from each text's first real token
                kw["position_ids"] = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                res = self._model(**kw, output_hidden_states=True)
            mask = enc["attention_mask"].unsqueeze(-1).float()
            for li, h in enumerate(res.hidden_states):
                pooled = (h.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                if li >= len(layers):
                    layers.append([])
                layers[li].append(pooled.numpy())
        return [np.concatenate(x, axis=0) for x in layers]

    def next_token_logprobs(self, prompts: Sequence[str]) -> np.ndarray:
        """(n_prompts, vocab) log-probabilities of the next token after each prompt."""
        self._load()
        import torch

        rows = [self._last_logprobs(prompts[i:i + self.batch_size], torch).numpy()
                for i in range(0, len(prompts), self.batch_size)]
        return np.concatenate(rows, axis=0) if rows else np.zeros((0, 0), dtype=np.float32)

    def close(self) -> None:
        self._model = None
        self._tok = None
        self._processor = None


def _is_image_text(cfg: dict[str, Any]) -> bool:
    """Whether a config describes an image-text model that transformers implements itself."""
    if isinstance(cfg.get("vision_config"), dict):
        return True
    archs = cfg.get("architectures")
    names = [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else []
    if any("ImageTextToText" in a for a in names):
        return True
    if not any(a.endswith("ForConditionalGeneration") for a in names):
        return False  # e.g. causal LMs: the plain text path
    try:  # ...ForConditionalGeneration is also seq2seq text (T5, BART): ask transformers' own table
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    except ImportError:
        return False
    return cfg.get("model_type") in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def _open_image(path: str) -> Any:
    """An RGB PIL image, read fully now, so that a missing or broken file fails before the model runs."""
    p = Path(path)
    if not p.is_file():
        raise BackendError(f"{p}: image file not found")
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:
        raise BackendError("images need Pillow (pip install pillow)") from exc
    try:
        with Image.open(p) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise BackendError(f"{p}: not a readable image ({type(exc).__name__}: {exc})") from exc
