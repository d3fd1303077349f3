"""A tiny causal LM folder in Hugging Face layout, written by transformers itself (random weights)."""

from __future__ import annotations

from pathlib import Path


def write_tiny_llama(path: Path, seed: int = 0, vocab: int = 64, hidden: int = 32, layers: int = 2,
                     chars: bool = False) -> Path:
    """Words w0..wN (default) or, with chars=True, one token per printable ASCII character."""
    import string

    import torch
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    if chars:
        words = ["<unk>", "<s>", "</s>"] + sorted(set(string.printable) - set("\t\n\r\x0b\x0c"))
        vocab = len(words)
    else:
        words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(vocab - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = (pre_tokenizers.Split(Regex("."), behavior="isolated") if chars
                         else pre_tokenizers.Whitespace())
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                      bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path
