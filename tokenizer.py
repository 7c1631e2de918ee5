"""Tokenizers and the one vocabulary layout every part of the project shares.

What is here (PAPER.md §1 and §3.0: one vocabulary everywhere, T5's id layout):
  * `Vocab`: pure id arithmetic of the T5 layout (pad 0, eos 1, unk 2, 100 sentinels at the top).
  * `Tokenizer(Vocab)`: the text interface, `encode(text) -> ids` (no EOS), `decode(ids) -> text`, `save(path)`.
  * `BPETokenizer` / `train_bpe(texts, size)`: a byte-level BPE trained from scratch (our small-scale tokenizer).
    decode(encode(s)) == s for every str that is valid Unicode text (every UTF-8 string).
  * `UnigramTokenizer.from_hf_json(path)`: reads a Hugging Face T5 `tokenizer.json` (SentencePiece unigram) and
    segments with Viterbi, so paper-scale runs tokenize as T5 did (ids 0..32099, sentinels 32000..32099).
  * `load_tokenizer(path)` (either format) and `get_tokenizer(data_dir, size, path)` (load or train + cache).

Run:  python tokenizer.py --data_dir=../shared/data --size=8192 --path=out/bpe8192.json
      trains (or loads) the BPE tokenizer on the default corpus and prints the time and tokens per character.
Tests: python -m pytest -q tests/test_tokenizer.py
"""
import heapq
import json
import math
import os
import re
import sys
import tempfile
import time
import unicodedata
from collections import Counter, defaultdict
from typing import Iterable, Iterator

from tqdm import tqdm


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


class Tokenizer(Vocab):
    """Text <-> ids on top of the `Vocab` layout; BPETokenizer and UnigramTokenizer implement it."""

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without EOS (callers append `eos_id` where the task wants it)."""
        raise NotImplementedError

    def decode(self, ids) -> str:
        """Text of `ids`; pad and eos are skipped (it does not stop at eos), sentinels show as "<extra_id_k>"."""
        raise NotImplementedError

    def save(self, path: str) -> None:
        raise NotImplementedError

    def _content_ids(self, ids) -> Iterator[int]:
        """The ids decode renders: skips pad, eos, the label ignore index -100 and the padding rows
        [size, model_vocab_size) of the embedding, which a model can emit but the data never holds."""
        ids = ids.tolist() if hasattr(ids, "tolist") else ids  # torch / numpy arrays
        for i in ids:
            i = int(i)
            if i in (self.pad_id, self.eos_id, -100) or self.size <= i < self.model_vocab_size:
                continue
            if not 0 <= i < self.size:
                raise ValueError(f"token id {i} is outside this tokenizer's range 0..{self.model_vocab_size - 1}")
            yield i

    def sentinel_text(self, i: int) -> str:
        return f"<extra_id_{self.size - 1 - i}>"


def write_json_atomic(path: str, obj, indent=None) -> None:
    """json.dump to path through a temp file in the same folder + os.replace: a crash or a concurrent
    reader never sees half a file (also pretrain.py's and finetune.py's result.json)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=indent)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cached tokenizer or a result is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------------------------------------
# Byte-level BPE (GPT-2 style), trained from scratch.

# Pre-tokenization: GPT-2's pattern written with stdlib `re` (no \p{L}): English contractions, letter runs,
# up to 3 digits (numbers split into short chunks, as in GPT-4), punctuation runs (underscore counts as
# punctuation: `[^\W\d_]` is "letters only"), each optionally led by one space; then whitespace, where a run
# gives its last space to the next word. The alternatives cover every character, so the words concatenate
# back to the text and merges never cross a word boundary.
PRETOKENIZE_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d{1,3}| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
_PRETOKENIZE = re.compile(PRETOKENIZE_PATTERN)
BYTE_OFFSET = 3  # byte b has id 3 + b, right after pad/eos/unk
FIRST_MERGE_ID = BYTE_OFFSET + 256  # 259: the first merged token


def _merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of `pair`, left to right, by `new_id`."""
    out, i, n = [], 0, len(ids)
    a, b = pair
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class BPETokenizer(Tokenizer):
    """Byte-level BPE: ids 0,1,2 = pad/eos/unk, 3..258 = the 256 bytes, 259.. = merges, top 100 = sentinels.

    Text is split into words (PRETOKENIZE_PATTERN), each word's UTF-8 bytes are merged by rank (the order in
    which training learned the merges). Literal text such as "<extra_id_3>" typed by a user is just bytes here:
    only the sentinel ids themselves decode to "<extra_id_k>", so decode(encode(s)) == s always holds.
    Ids between the last merge and the sentinels (only when training stopped early) are never produced.
    """

    def __init__(self, size: int, merges: list):
        super().__init__(size)
        n_free = size - self.num_sentinels - FIRST_MERGE_ID  # room for merges
        if n_free < 0:
            raise ValueError(f"byte-level BPE needs size >= {FIRST_MERGE_ID + self.num_sentinels}, got {size}")
        if len(merges) > n_free:
            raise ValueError(f"{len(merges)} merges do not fit a vocabulary of {size} (room for {n_free})")
        self.merges = [tuple(m) for m in merges]
        # token bytes per id, so decode is a join; merged token = concatenation of its two parts
        table = [b"", b"", b"<unk>"] + [bytes([b]) for b in range(256)]
        for new_id, (a, b) in enumerate(self.merges, FIRST_MERGE_ID):
            if not (0 <= a < new_id and 0 <= b < new_id):
                raise ValueError(f"merge {new_id - FIRST_MERGE_ID} ({a}, {b}) refers to an id not yet defined")
            table.append(table[a] + table[b])
        table += [b""] * (size - self.num_sentinels - len(table))  # unused ids render as nothing
        table += [f"<extra_id_{k}>".encode() for k in reversed(range(self.num_sentinels))]  # id size-100 = 99
        self.token_bytes = table
        # pair -> merged id; a lower id means an earlier merge, which is also its rank
        self.ranks = {pair: new_id for new_id, pair in enumerate(self.merges, FIRST_MERGE_ID)}
        self._cache: dict[str, list[int]] = {}  # word -> ids; words repeat a lot, so this is most of the speed

    def _bpe(self, word: str) -> list[int]:
        ids = [BYTE_OFFSET + b for b in word.encode("utf-8")]
        while len(ids) > 1:
            # the earliest-learned pair present goes first; this replays training's merge order exactly,
            # because a merge only creates pairs containing its new id, never an older pair
            pair = min(zip(ids, ids[1:]), key=lambda p: self.ranks.get(p, math.inf))
            new_id = self.ranks.get(pair)
            if new_id is None:
                break
            ids = _merge(ids, pair, new_id)
        return ids

    def encode(self, text: str) -> list[int]:
        out = []
        for word in _PRETOKENIZE.findall(text):
            ids = self._cache.get(word)
            if ids is None:
                ids = self._bpe(word)
                if len(self._cache) < 1_000_000:  # bound memory on endless streams of new words
                    self._cache[word] = ids
            out.extend(ids)
        return out

    def decode(self, ids) -> str:
        data = b"".join(self.token_bytes[i] for i in self._content_ids(ids))
        # a model can emit byte sequences that are not UTF-8; show them as U+FFFD instead of failing
        return data.decode("utf-8", errors="replace")

    def save(self, path: str) -> None:
        write_json_atomic(path, {"type": "byte_level_bpe", "version": 1, "size": self.size,
                                  "pretokenize_pattern": PRETOKENIZE_PATTERN, "merges": self.merges})


def train_bpe(texts: Iterable[str], size: int, min_frequency: int = 2, progress: bool = True) -> BPETokenizer:
    """Learn size-359 merges (fewer if no pair occurs `min_frequency` times) from `texts`.

    The standard efficient algorithm: count words once; keep pair -> count and pair -> words containing it;
    after each merge, update only the words that contained the merged pair. The best pair comes from a heap
    with lazy deletion (an entry is stale when its count no longer matches); ties go to the smallest
    (left id, right id), so the same corpus always gives the same merges.
    """
    if size < FIRST_MERGE_ID + Vocab.num_sentinels:
        raise ValueError(f"byte-level BPE needs size >= {FIRST_MERGE_ID + Vocab.num_sentinels}, got {size}")
    if isinstance(texts, str):
        raise ValueError("train_bpe wants an iterable of texts, not one string (it would iterate characters)")
    word_counts = Counter()
    for text in texts:
        word_counts.update(_PRETOKENIZE.findall(text))
    vocab_words = sorted(word_counts)  # sorted: independent of the order texts arrived in
    words = [[BYTE_OFFSET + b for b in w.encode("utf-8")] for w in vocab_words]
    freqs = [word_counts[w] for w in vocab_words]
    del word_counts, vocab_words

    pair_count: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> indices of words that (may) hold it
    for wi, (w, f) in enumerate(zip(words, freqs)):
        for pair in zip(w, w[1:]):
            pair_count[pair] += f
            where[pair].add(wi)
    heap = [(-c, pair) for pair, c in pair_count.items()]
    heapq.heapify(heap)

    merges = []
    n_merges = size - Vocab.num_sentinels - FIRST_MERGE_ID
    for new_id in tqdm(range(FIRST_MERGE_ID, FIRST_MERGE_ID + n_merges), desc="BPE merges", disable=not progress,
                       mininterval=1.0):
        while heap and pair_count.get(heap[0][1], 0) != -heap[0][0]:
            heapq.heappop(heap)  # stale entry: its pair's count changed after it was pushed
        if not heap or -heap[0][0] < min_frequency:
            break
        pair = heapq.heappop(heap)[1]
        merges.append(pair)
        changed = set()
        for wi in where.pop(pair):
            old = words[wi]
            new = _merge(old, pair, new_id)
            if len(new) == len(old):
                continue  # `where` is lazy: this word lost the pair in an earlier merge
            f = freqs[wi]
            # remove the word's old pairs and add its new ones (words are short, so this is cheap)
            for p in zip(old, old[1:]):
                pair_count[p] -= f
                changed.add(p)
            for p in zip(new, new[1:]):
                pair_count[p] += f
                where[p].add(wi)
                changed.add(p)
            words[wi] = new
        for p in changed:
            c = pair_count[p]
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                del pair_count[p]
    return BPETokenizer(size, merges)


# ----------------------------------------------------------------------------------------------------------
# SentencePiece unigram, read from a Hugging Face T5 tokenizer.json.

def _typed_nodes(node) -> Iterator[dict]:
    """Every {"type": ...} dict in a JSON tree: normalizers and pre-tokenizers nest inside "Sequence" ones."""
    if isinstance(node, dict):
        if "type" in node:
            yield node
        node = list(node.values())
    if isinstance(node, list):
        for child in node:
            yield from _typed_nodes(child)


class UnigramTokenizer(Tokenizer):
    """T5's SentencePiece unigram model: each word gets the Viterbi segmentation with the highest sum of piece
    log-probabilities.

    Pipeline as in Hugging Face `tokenizers`: (1) added tokens ("<pad>", "</s>", "<unk>", "<extra_id_k>")
    typed in the text are cut out and map to their ids (T5 behaviour); (2) normalizer: SentencePiece's
    "Precompiled" charsmap is approximated by unicodedata NFKC (T5's nmt_nfkc is NFKC plus whitespace clean-up,
    which step 3 does); explicit NFC/NFD/NFKC/NFKD and Lowercase are applied; other normalizers are ignored;
    (3) whitespace split, each word prefixed by the Metaspace "▁" (when preceded by whitespace, or by
    add_prefix_space / prepend_scheme); (4) Viterbi per word, a character with no piece becomes unk
    (score min - 10, consecutive unks fused into one, as SentencePiece and HF do). Ties in Viterbi may
    break differently from SentencePiece; on real vocabularies they are rare.
    """

    def __init__(self, spec: dict):
        model = spec.get("model") or {}
        if model.get("type") != "Unigram":
            raise ValueError(f"expected a tokenizer.json with model.type 'Unigram', got {model.get('type')!r}")
        vocab = model["vocab"]
        added = {t["content"]: int(t["id"]) for t in spec.get("added_tokens") or []}
        super().__init__(max(len(vocab), max(added.values(), default=-1) + 1))
        self.spec = spec
        self.id_to_piece = [p for p, _ in vocab] + [""] * (self.size - len(vocab))
        for content, i in added.items():
            self.id_to_piece[i] = content
        # the T5 layout is what the rest of the project assumes: check it instead of trusting it
        ids_of = defaultdict(set)  # piece -> every id it has, in the vocab list and in added_tokens
        for p, i in [(p, i) for i, (p, _) in enumerate(vocab)] + list(added.items()):
            ids_of[p].add(i)
        expected = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"<extra_id_{k}>": self.sentinel(k) for k in range(100)}}
        for piece, i in expected.items():
            if ids_of.get(piece) != {i}:
                raise ValueError(f"tokenizer.json does not follow the T5 layout: {piece!r} has ids "
                                 f"{sorted(ids_of.get(piece, []))}, expected {i} (vocabulary size {self.size})")
        if model.get("unk_id", 2) != self.unk_id or model.get("byte_fallback"):
            raise ValueError(f"unsupported unigram model: unk_id {model.get('unk_id')} (T5: 2), "
                             f"byte_fallback {model.get('byte_fallback')} (T5: false)")
        special = {i for i in added.values()} | set(expected.values())
        # ordinary pieces only: specials never come out of Viterbi, they are matched as literal text first
        self.pieces = {p: (i, float(s)) for i, (p, s) in enumerate(vocab) if i not in special and p}
        self.max_piece_len = max(map(len, self.pieces), default=1)
        self.unk_score = min((s for _, s in self.pieces.values()), default=0.0) - 10.0  # HF's kUnkPenalty
        specials = sorted((c for c in {**added, **expected}), key=len, reverse=True)  # longest match first
        self._special_re = re.compile("(" + "|".join(map(re.escape, specials)) + ")")
        self._special_ids = {c: min(ids_of[c]) for c in specials}
        norm = [n["type"] for n in _typed_nodes(spec.get("normalizer"))]
        forms = ["NFKC" if t == "Precompiled" else t for t in norm if t in ("Precompiled", "NFC", "NFD", "NFKC", "NFKD")]
        self.unicode_form = forms[0] if forms else None
        self.lowercase = "Lowercase" in norm
        meta = next((n for n in _typed_nodes(spec.get("pre_tokenizer")) if n["type"] == "Metaspace"), {})
        self.replacement = meta.get("replacement", "▁")
        # old files say add_prefix_space (T5: true), newer ones prepend_scheme ("always" for T5)
        self.prepend_scheme = meta.get("prepend_scheme") or ("always" if meta.get("add_prefix_space", True) else "never")
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_hf_json(cls, path: str) -> "UnigramTokenizer":
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f))

    def _viterbi(self, word: str) -> list[int]:
        n = len(word)
        best = [-math.inf] * (n + 1)  # best[j]: highest score of a segmentation of word[:j]
        back = [(0, 0)] * (n + 1)  # back[j]: (start, id) of the last piece of that segmentation
        best[0] = 0.0
        for i in range(n):
            single = False
            for j in range(i + 1, min(n, i + self.max_piece_len) + 1):
                hit = self.pieces.get(word[i:j])
                if hit is None:
                    continue
                single |= j == i + 1
                if best[i] + hit[1] > best[j]:
                    best[j], back[j] = best[i] + hit[1], (i, hit[0])
            # a character no piece starts with: one unk for it, so every position stays reachable
            if not single and best[i] + self.unk_score > best[i + 1]:
                best[i + 1], back[i + 1] = best[i] + self.unk_score, (i, self.unk_id)
        ids, j = [], n
        while j > 0:
            j, t = back[j]
            ids.append(t)
        ids.reverse()
        return [t for k, t in enumerate(ids) if not (t == self.unk_id and k and ids[k - 1] == self.unk_id)]

    def encode(self, text: str) -> list[int]:
        out = []
        for si, segment in enumerate(self._special_re.split(text)):
            if si % 2:  # odd parts of re.split with a group are the matched special tokens
                out.append(self._special_ids[segment])
                continue
            if self.unicode_form:
                segment = unicodedata.normalize(self.unicode_form, segment)
            if self.lowercase:
                segment = segment.lower()
            for wi, word in enumerate(segment.split()):
                # "▁" marks a preceding space; the first word gets one too under T5's add_prefix_space
                spaced = wi > 0 or segment[:1].isspace()
                if spaced or self.prepend_scheme == "always" or (self.prepend_scheme == "first" and si == 0):
                    word = self.replacement + word
                ids = self._cache.get(word)
                if ids is None:
                    ids = self._viterbi(word)
                    if len(self._cache) < 1_000_000:
                        self._cache[word] = ids
                out.extend(ids)
        return out

    def decode(self, ids) -> str:
        text = "".join(self.sentinel_text(i) if self.is_sentinel(i) else self.id_to_piece[i]
                       for i in self._content_ids(ids))
        text = text.replace(self.replacement, " ")
        # the Metaspace decoder drops the space that the prefix "▁" of the first word stands for
        return text[1:] if text.startswith(" ") and self.prepend_scheme != "never" else text

    def save(self, path: str) -> None:
        write_json_atomic(path, self.spec)


# ----------------------------------------------------------------------------------------------------------
# Loading, default corpus, caching.

def load_tokenizer(path: str) -> Tokenizer:
    """Our BPE json (written by BPETokenizer.save) or a Hugging Face T5 tokenizer.json (unigram)."""
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    if spec.get("type") == "byte_level_bpe":
        if spec.get("pretokenize_pattern") != PRETOKENIZE_PATTERN:
            raise ValueError(f"{path} was trained with a different pre-tokenizer pattern; retrain it")
        return BPETokenizer(spec["size"], spec["merges"])
    if (spec.get("model") or {}).get("type") == "Unigram":
        return UnigramTokenizer(spec)
    raise ValueError(f"{path} is neither our byte-level BPE json nor a Hugging Face unigram tokenizer.json")


def default_corpus(data_dir: str, max_chars_per_file: int | None = None, natural_only: bool = False) -> Iterator[str]:
    """natural_text/train.txt plus source and target of every `<task>/train.jsonl` (or the original release's
    `train.txt` with input<TAB>target) in data_dir. `max_chars_per_file` caps each file's contribution, which
    bounds training time and keeps the two large files (CNN articles, SQuAD contexts) from dominating.
    `natural_only`: the natural text alone, as T5's SentencePiece model was trained on C4 alone; then every
    downstream token is a piece natural pre-training has seen (with the mixed corpus, 60% of MTOP's target
    tokens, pieces like "[IN:", never occur in natural_text, so natural pre-training only ever pushes them down)."""
    files = [os.path.join(data_dir, "natural_text", "train.txt")]  # plain text, one paragraph per line
    for task in sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) and not natural_only else []:
        for name in ("train.jsonl", "train.txt"):
            if task != "natural_text" and os.path.isfile(os.path.join(data_dir, task, name)):
                files.append(os.path.join(data_dir, task, name))
                break
    for fi, path in enumerate(files):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer corpus file {path} is missing (data_dir={data_dir!r})")
        budget = max_chars_per_file or math.inf
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if path.endswith(".jsonl") and not line.strip():
                    continue  # a blank line (e.g. at the end of a file) holds no example
                if path.endswith(".jsonl"):
                    try:
                        ex = json.loads(line)
                        parts = [ex["source"], ex["target"]]
                    except (json.JSONDecodeError, KeyError, TypeError) as e:
                        raise ValueError(f"{path}:{n}: expected a JSON object with source and target ({e})")
                elif fi == 0:
                    parts = [line]
                else:
                    parts = line.rstrip("\n").split("\t")
                for text in parts:
                    yield text
                    budget -= len(text)
                if budget <= 0:
                    break


def get_tokenizer(data_dir: str, size: int, path: str, max_chars_per_file: int | None = 10_000_000,
                  progress: bool = True, natural_only: bool = False) -> Tokenizer:
    """Load the tokenizer cached at `path`, or train a BPE of `size` on default_corpus(data_dir) and save it
    there (atomically, so parallel runs never read a half-written file). On ../shared/data at size 8192 with
    the default 10M-character cap per file (40M characters in all) training takes about 35-45 s on 2 CPU cores;
    uncapped (77M characters) about 45 s."""
    if os.path.exists(path):
        tok = load_tokenizer(path)
        if tok.size != size:
            raise ValueError(f"cached tokenizer {path} has size {tok.size}, but size {size} was asked for; "
                             f"delete it or pass another path")
        return tok
    tok = train_bpe(default_corpus(data_dir, max_chars_per_file, natural_only), size, progress=progress)
    tok.save(path)
    return tok


if __name__ == "__main__":
    # --key=value arguments, as in the training scripts; max_chars_per_file=0 reads whole files
    args = dict(data_dir="../shared/data", size=8192, path="out/bpe8192.json", max_chars_per_file=10_000_000,
                natural_only=0)  # natural_only=1: train on natural_text alone (default_corpus)
    for key, _, value in (arg.lstrip("-").partition("=") for arg in sys.argv[1:]):
        if key not in args:
            raise SystemExit(f"unknown argument {key!r}; valid: {', '.join(args)}")
        args[key] = type(args[key])(value)
    t0 = time.time()
    tok = get_tokenizer(args["data_dir"], args["size"], args["path"], args["max_chars_per_file"],
                        natural_only=bool(args["natural_only"]))
    print(f"tokenizer {args['path']}: size {tok.size}, ready in {time.time() - t0:.1f} s")
    for task in sorted(os.listdir(args["data_dir"])):  # validation text: not seen in training
        if os.path.isfile(fname := os.path.join(args["data_dir"], task, "validation.jsonl")):
            with open(fname, encoding="utf-8") as f:
                texts = [json.loads(line)[key] for line in f for key in ("source", "target")][:2000]
            print(f"{task:18s} {sum(len(tok.encode(t)) for t in texts) / sum(map(len, texts)):.3f} tokens/char")
