"""Local models through `transformers` on the CPU: greedy or sampled text, next-token log-probs, hidden states.

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

    def generate(self, requests: Sequence[Request],
                 on_response: Callable[[int, Response], None] | None = None) -> list[Response]:
        self._load()
        if not self._is_causal:
            raise BackendError(f"{self.path}: not a causal language model; it can give hidden states only")
        import torch

        out: list[Response] = []
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start:start + self.batch_size]
            for j, req in enumerate(batch):  # one at a time keeps sampling seeds per request exact
                resp = self._generate_one(req, torch)
                out.append(resp)
                if on_response:
                    on_response(start + j, resp)
        return out

    def _prompt_text(self, req: Request) -> str:
        if req.mode == "chat" and req.messages:
            if getattr(self._tok, "chat_template", None):
                msgs = [{"role": r, "content": c} for r, c in req.messages]
                return str(self._tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
            return "\n".join(c for _, c in req.messages)
        return req.prompt

    def _generate_one(self, req: Request, torch: Any) -> Response:
        if req.images:
            raise BackendError(f"{self.path}: images are not supported by the local text backend")
        enc = self._tok(self._prompt_text(req), return_tensors="pt")
        gen = torch.Generator().manual_seed(req.seed if req.seed is not None else 0)
        ids = enc["input_ids"]
        tokens: list[str] = []
        tops: list[dict[str, float]] = []
        new_ids: list[int] = []
        cur = ids
        with torch.no_grad():
            # the whole sequence is re-run each step: slower than a KV cache, but stable across
            # transformers versions, and local models here are small
            for _ in range(req.max_tokens):
                logits = self._model(input_ids=cur, use_cache=False).logits[0, -1].float()
                logp = torch.log_softmax(logits, dim=-1)
                if req.temperature and req.temperature > 0:
                    probs = torch.softmax(logits / req.temperature, dim=-1)
                    nxt = int(torch.multinomial(probs, 1, generator=gen))
                else:
                    nxt = int(torch.argmax(logits))
                if req.top_logprobs:
                    v, i = torch.topk(logp, req.top_logprobs)
                    tops.append({self._tok.decode([int(k)]): float(x) for k, x in zip(i, v)})
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
            with torch.no_grad():
                res = self._model(**enc, output_hidden_states=True)
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

        rows = []
        with torch.no_grad():
            for p in prompts:
                enc = self._tok(p, return_tensors="pt")
                logits = self._model(**enc).logits[0, -1].float()
                rows.append(torch.log_softmax(logits, dim=-1).numpy())
        return np.stack(rows)

    def close(self) -> None:
        self._model = None
        self._tok = None
