"""Tiny random models built offline (a 2-layer, width-64 Llama and a byte-level BPE tokenizer trained on the
word list): for fast tests and for the benchmarks' smoke mode. Never the default path."""
from __future__ import annotations

import random
from pathlib import Path

import torch

WORDS_FILE = Path(__file__).resolve().parent / "resources" / "words.txt"

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = WORDS_FILE.read_text().split()
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(words) for _ in range(12)) + "." for _ in range(400)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, eos_token_id=2, bos_token_id=1, pad_token_id=2)
    return LlamaForCausalLM(cfg)


def benchmark_model(model_path: str = "default", tiny: bool = False):
    """The model a benchmark times: the tiny random Llama (a smoke run) or a real one, fp32 on CPU."""
    if tiny:
        return build_model(len(build_tokenizer()))
    from . import models

    return models.load_model(model_path, dtype="float32" if not torch.cuda.is_available() else "auto")


def benchmark_batch(vocab_size: int, batch_size: int, seq_len: int, low: int = 3, device=None):
    """Random token ids (seeded) with the first quarter of every row masked as a prompt: (ids, mask, labels)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(low, vocab_size, (batch_size, seq_len), generator=g).to(device)
    labels = ids.clone()
    labels[:, : seq_len // 4] = -100  # a prompt without loss, as instruction data has
    return ids, torch.ones_like(ids), labels


def timed(fn):
    """(what fn returns, its wall time in seconds); on a GPU the kernels it launched are counted finished."""
    import time

    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t
