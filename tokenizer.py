"""Tokenizers and the one vocabulary layout every part of the project shares.

(Work in progress: the Vocab layout below is final; the tokenizers are being written.)
"""
import math


class Vocab:
    """Pure id arithmetic of the T5 layout, for a tokenizer of `size` ids (T5: 32100).

    pad 0, eos 1, unk 2; the 100 sentinels `<extra_id_k>` sit at the top, `<extra_id_0>` = size-1-0
    is the highest (T5: 32099) and `<extra_id_99>` = size-100 (T5: 32000). The model's embedding table
    is `size` rounded up to a multiple of 128 (T5: 32128); ids >= size are never produced.
    """

    pad_id, eos_id, unk_id = 0, 1, 2
    num_sentinels = 100

    def __init__(self, size: int):
        if size < 200:
            raise ValueError(f"vocabulary size {size} is too small: need room for 3 specials, 100 sentinels and content")
        self.size = size
        self.model_vocab_size = int(math.ceil(size / 128) * 128)

    def sentinel(self, k: int) -> int:
        if not 0 <= k < self.num_sentinels:
            raise ValueError(f"sentinel index {k} out of range 0..{self.num_sentinels - 1}")
        return self.size - 1 - k

    def is_sentinel(self, i: int) -> bool:
        return self.size - self.num_sentinels <= i < self.size
