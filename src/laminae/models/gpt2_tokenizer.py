"""GPT-2's byte-level BPE tokenizer, rebuilt offline from the bundled BPE ranks.

The hub cannot be reached everywhere laminae runs, but the random models used for smoke tests
and benchmarks should tokenise exactly like GPT-2 (" sun" is one token, the seed corpus is ~340
tokens). `assets/gpt2_bpe_ranks.tiktoken.gz` holds GPT-2's ranked byte strings; this module
recovers the merge list from the ranks and wraps it as a Hugging Face `GPT2TokenizerFast`.

    >>> tok = gpt2_tokenizer()
    >>> tok("Hello world")["input_ids"]
    [15496, 995]
"""

from __future__ import annotations

import base64
import functools
import gzip
from importlib import resources

from transformers import GPT2TokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

RANKS_ASSET = "gpt2_bpe_ranks.tiktoken.gz"
END_OF_TEXT = "<|endoftext|>"


def load_bpe_ranks() -> dict[bytes, int]:
    """The bundled GPT-2 BPE ranks: byte string -> token id (0 .. 50255)."""
    raw = resources.files("laminae").joinpath("assets", RANKS_ASSET).read_bytes()
    ranks = {}
    for line in gzip.decompress(raw).splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _merge_of(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The pair that BPE merges last to build `token`: run BPE on its bytes with only the
    merges ranked below it, which always stops at exactly two parts."""
    parts = [token[i : i + 1] for i in range(len(token))]
    limit = ranks[token]
    while len(parts) > 2:
        best_rank, best_i = None, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < limit and (best_rank is None or rank < best_rank):
                best_rank, best_i = rank, i
        if best_i is None:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    if len(parts) != 2:
        raise ValueError(f"cannot recover the BPE merge for token {token!r}")
    return parts[0], parts[1]


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer() -> GPT2TokenizerFast:
    """GPT-2's tokenizer (vocabulary 50257, `<|endoftext|>` = 50256), built from the bundled
    ranks; cached, so later calls are free. Save it with `save_pretrained` beside a model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    ranks = load_bpe_ranks()
    to_unicode = bytes_to_unicode()

    def as_text(token: bytes) -> str:
        return "".join(to_unicode[b] for b in token)

    vocab = {as_text(token): rank for token, rank in ranks.items()}
    vocab[END_OF_TEXT] = len(ranks)
    merges = [
        tuple(as_text(part) for part in _merge_of(token, ranks))
        for token, _ in sorted(ranks.items(), key=lambda item: item[1])
        if len(token) > 1
    ]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return GPT2TokenizerFast(
        tokenizer_object=backend,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        unk_token=END_OF_TEXT,
        model_max_length=1024,
    )
