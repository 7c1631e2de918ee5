"""tokenizer.py: the tokenizers, and the one id layout (T5's) that the whole project shares.

Vocab is the id arithmetic; BPETokenizer (train_bpe), a byte-level BPE trained from scratch, and
UnigramTokenizer, T5's model read from its tokenizer.json, add encode(text) -> ids (no EOS: tasks
append it) and decode(ids) -> text (pad and eos skipped, not stopped at; sentinels: <extra_id_k>).
Run: python tokenizer.py --size=8192   trains (or loads) a BPE and says how long it took (-h)
Reading order: model.py, tokenizer.py (here), tasks.py, ... Next: tasks.py.
"""
import heapq, json, math, os, re, time, unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache

from tqdm import tqdm
import config

class Vocab:
    """The T5 layout of `size` ids (T5: 32100): pad 0, eos 1, unk 2, <extra_id_k> = size-1-k (T5:
    32099 down to 32000). The embedding rounds size up to a multiple of 128 rows (T5: 32128)."""
    pad_id, eos_id, unk_id, num_sentinels = 0, 1, 2, 100

    def __init__(self, size: int):
        if size < 200:
            raise ValueError(f"vocabulary size {size} < 200: no room for 103 specials and content")
        self.size, self.model_vocab_size = size, -(-size // 128) * 128

    def sentinel(self, k: int) -> int:  # k in 0..99
        return self.size - 1 - k

    def is_sentinel(self, i: int) -> bool:
        return self.size - self.num_sentinels <= i < self.size

    def _content_ids(self, ids) -> list[int]:  # what decode shows of ids, labels or a tensor
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        if bad := [i for i in ids if i != -100 and not 0 <= i < self.model_vocab_size]:
            raise ValueError(f"token id {bad[0]} is outside 0..{self.model_vocab_size - 1}")
        return [i for i in ids if 1 < i < self.size]  # not pad, eos, -100, padding rows >= size

# Byte-level BPE on the words of GPT-2's pattern in stdlib `re`: contractions, letter runs, up to 3
# digits (as GPT-4), punctuation runs ("_" too), each led by at most one space; a whitespace run
# leaves its last space to the next word. Words cover the text, and merges never cross them.
PRETOKENIZE_PATTERN = r"'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d{1,3}| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"
_PRETOKENIZE = re.compile(PRETOKENIZE_PATTERN)
BYTE_OFFSET, FIRST_MERGE_ID = 3, 259  # byte b has id 3 + b (after pad/eos/unk); merges follow

def _merge(ids, pair, new_id):  # every non-overlapping `pair`, left to right, becomes new_id
    out, (a, b) = [], pair
    for t in ids:
        if t == b and out and out[-1] == a:  # out[-1] is never a merged b: new_id is no a
            out[-1] = new_id
        else:
            out.append(t)
    return out

class BPETokenizer(Vocab):
    """Ids 3..258 are the bytes, 259.. the merges, applied to each word by rank (the order training
    learned them). Typed "<extra_id_3>" is plain bytes: only sentinel ids decode to it, so
    decode(encode(s)) == s for every str. Ids between the last merge and the sentinels go unused."""

    def __init__(self, size: int, merges: list):
        super().__init__(size)
        if len(merges) > (room := size - self.num_sentinels - FIRST_MERGE_ID):
            raise ValueError(f"{len(merges)} merges do not fit a BPE of size {size} (least: 359)")
        self.merges, self._word = [tuple(m) for m in merges], lru_cache(1 << 20)(self._bpe)
        table = [b"", b"", b"<unk>"] + [bytes([b]) for b in range(256)]  # each id's bytes
        for a, b in self.merges:
            table.append(table[a] + table[b])
        self.token_bytes = table + [b""] * (room - len(self.merges)) + [
            f"<extra_id_{k}>".encode() for k in reversed(range(self.num_sentinels))]
        self.ranks = {p: i for i, p in enumerate(self.merges, FIRST_MERGE_ID)}  # id = rank too

    def _bpe(self, word: str) -> list[int]:  # the earliest merge first replays training
        ids = [BYTE_OFFSET + b for b in word.encode("utf-8")]  # (no merge makes older pairs)
        while pair := min((p for p in zip(ids, ids[1:]) if p in self.ranks),
                          key=self.ranks.__getitem__, default=None):
            ids = _merge(ids, pair, self.ranks[pair])
        return ids

    def encode(self, text: str) -> list[int]:  # _word caches: words repeat
        return [i for word in _PRETOKENIZE.findall(text) for i in self._word(word)]

    def decode(self, ids) -> str:
        data = b"".join(self.token_bytes[i] for i in self._content_ids(ids))
        return data.decode("utf-8", "replace")  # a model may emit bytes that are not UTF-8

    def save(self, path: str) -> None:
        config.write_json(path, dict(type="byte_level_bpe", version=1, size=self.size,
            pretokenize_pattern=PRETOKENIZE_PATTERN, merges=self.merges), indent=None)

def train_bpe(texts, size: int, min_frequency: int = 2, progress: bool = True) -> BPETokenizer:
    """Learn size-359 merges (fewer if no pair occurs min_frequency times), updating only the words
    holding the merged pair; ties go to the smallest (left, right) ids: same corpus, same merges."""
    BPETokenizer(size, [])  # checks the size before the long part
    tally = sorted(Counter(w for text in texts for w in _PRETOKENIZE.findall(text)).items())
    words, freqs = [[BYTE_OFFSET + b for b in w.encode()] for w, _ in tally], [f for _, f in tally]
    pair_count, where, merges = defaultdict(int), defaultdict(set), []  # where: pair -> word ids
    for wi, (w, f) in enumerate(zip(words, freqs)):
        for pair in zip(w, w[1:]):
            pair_count[pair] += f
            where[pair].add(wi)
    heapq.heapify(heap := [(-c, pair) for pair, c in pair_count.items()])
    for new_id in tqdm(range(FIRST_MERGE_ID, size - 100), "BPE merges", disable=not progress):
        while heap and pair_count.get(heap[0][1], 0) != -heap[0][0]:
            heapq.heappop(heap)  # stale: its pair's count changed after it was pushed
        if not heap or -heap[0][0] < min_frequency:
            break
        merges.append(pair := heapq.heappop(heap)[1])
        changed = set()
        for wi in where.pop(pair):
            old, new, f = words[wi], _merge(words[wi], pair, new_id), freqs[wi]
            if len(new) == len(old):
                continue  # `where` is lazy: this word lost the pair in an earlier merge
            for p in zip(old, old[1:]):  # words are short: redoing all their pairs is cheap
                pair_count[p] -= f
            for p in zip(new, new[1:]):
                pair_count[p] += f
                where[p].add(wi)
            changed.update(zip(old, old[1:]), zip(new, new[1:]))
            words[wi] = new
        for p in changed:
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
    return BPETokenizer(size, merges)

class UnigramTokenizer(Vocab):
    """T5's SentencePiece model, from the vocabulary in HF's tokenizer.json. As HF: typed added
    tokens ("</s>", "<extra_id_k>") map to their ids; NFKC + split() stand in for nmt_nfkc; each
    word, led by "▁", gets its most probable pieces (Viterbi; rare ties may break otherwise)."""

    def __init__(self, spec: dict):
        model = spec.get("model") or {}
        if model.get("type") != "Unigram":
            raise ValueError(f"neither our BPE nor a unigram model: {model.get('type')!r}")
        vocab = model["vocab"]
        added = {t["content"]: int(t["id"]) for t in spec.get("added_tokens") or []}
        super().__init__(max(len(vocab), max(added.values(), default=-1) + 1))
        self.id_to_piece, ids_of = [""] * self.size, defaultdict(set)
        for i, p in [(i, p) for i, (p, _) in enumerate(vocab)] + [(i, p) for p, i in added.items()]:
            self.id_to_piece[i] = p
            ids_of[p].add(i)  # piece -> its ids
        expected = {"<pad>": 0, "</s>": 1, "<unk>": 2}  # the T5 layout: checked, not trusted
        expected.update({f"<extra_id_{k}>": self.sentinel(k) for k in range(self.num_sentinels)})
        bad = [f"{p} has ids {sorted(ids_of[p])}" for p, i in expected.items() if ids_of[p] != {i}]
        if bad or model.get("unk_id", 2) != self.unk_id or model.get("byte_fallback"):
            raise ValueError("tokenizer.json is not in the T5 layout (pad 0, eos 1, unk 2, "
                             f"<extra_id_k> size-1-k, no byte_fallback): {(bad or ['unk_id'])[0]}")
        special = set(added.values()) | set(expected.values())  # matched as text, never by Viterbi
        self.pieces = {p: (i, float(s)) for i, (p, s) in enumerate(vocab) if i not in special and p}
        self.max_piece_len = max(map(len, self.pieces), default=1)
        self.unk_score = min((s for _, s in self.pieces.values()), default=0.0) - 10.0  # as HF
        specials = sorted({**added, **expected}, key=len, reverse=True)  # longest match first
        self._special_re = re.compile("(" + "|".join(map(re.escape, specials)) + ")")
        self._special_ids = {c: min(ids_of[c]) for c in specials}
        self._word = lru_cache(1 << 20)(self._viterbi)  # words repeat: most of encode's speed

    def _viterbi(self, word: str) -> list[int]:
        n, best = len(word), [0.0] + [-math.inf] * len(word)  # best[j]: top score of word[:j]
        back = [(0, 0)] * (n + 1)  # back[j]: (start, id) of the last piece of that segmentation
        unk = (self.unk_id, self.unk_score)  # for a character no piece is: all stays reachable
        for i in range(n):
            for j in range(i + 1, min(n, i + self.max_piece_len) + 1):
                hit = self.pieces.get(word[i:j], unk if j == i + 1 else None)
                if hit is not None and best[i] + hit[1] > best[j]:
                    best[j], back[j] = best[i] + hit[1], (i, hit[0])
        ids, j = [], n
        while j > 0:
            j, t = back[j]
            if not (t == self.unk_id and ids and ids[-1] == t):  # a run of unks becomes one
                ids.append(t)
        return ids[::-1]

    def encode(self, text: str) -> list[int]:
        out = []  # the odd parts of re.split with a group are the special tokens it matched
        for si, segment in enumerate(self._special_re.split(text)):
            out += [self._special_ids[segment]] if si % 2 else [  # else words; "▁" is a space
                i for word in unicodedata.normalize("NFKC", segment).split()
                for i in self._word("▁" + word)]
        return out

    def decode(self, ids) -> str:
        text = "".join(self.id_to_piece[i] for i in self._content_ids(ids)).replace("▁", " ")
        return text[1:] if text.startswith(" ") else text  # as the Metaspace decoder does

def load_tokenizer(path: str) -> BPETokenizer | UnigramTokenizer:
    """Our BPE json (BPETokenizer.save) or a Hugging Face T5 tokenizer.json (unigram)."""
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
        if spec.get("type") != "byte_level_bpe":
            return UnigramTokenizer(spec)
        if spec.get("pretokenize_pattern") != PRETOKENIZE_PATTERN:
            raise ValueError("trained with another pre-tokenizer pattern; retrain it")
        return BPETokenizer(spec["size"], spec["merges"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # not JSON, or not this shape
        raise config.UserError(f"tokenizer file {path}: {type(e).__name__}: {e}") from None

def default_corpus(data_dir: str, max_chars_per_file=None, natural_only: bool = False):
    """natural_text/train.txt, then each task's train.jsonl (source and target; or the original
    release's train.txt), max_chars_per_file of each so CNN and SQuAD do not dominate. natural_only:
    as T5's saw C4 alone (else 60% of MTOP target tokens, "[IN:" etc., are not in natural_text)."""
    files = [os.path.join(data_dir, "natural_text", "train.txt")]
    for task in [] if natural_only else sorted(set(os.listdir(data_dir)) - {"natural_text"}):
        paths = [os.path.join(data_dir, task, name) for name in ("train.jsonl", "train.txt")]
        files += [p for p in paths if os.path.isfile(p)][:1]
    for fi, path in enumerate(files):
        budget = max_chars_per_file or math.inf
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:  # natural text, input<TAB>target or JSON (a blank line, e.g. the last: none)
                    parts = ([line] if fi == 0 else line.rstrip("\n").split("\t")
                             if not path.endswith(".jsonl") else [] if not line.strip()
                             else [(ex := json.loads(line))["source"], ex["target"]])
                except (ValueError, KeyError, TypeError) as e:  # ValueError: not JSON
                    raise config.UserError(f"{path}:{n}: expected a JSON object with source "
                                           f"and target ({e})") from None
                yield from parts
                if (budget := budget - sum(map(len, parts))) <= 0:
                    break

def get_tokenizer(data_dir: str, size: int, path: str, max_chars_per_file=10_000_000,
                  progress=True, natural_only=False) -> BPETokenizer | UnigramTokenizer:
    """The tokenizer at `path`, or a BPE of `size` trained on default_corpus(data_dir), saved there
    (atomically: parallel runs never read half a file). Size 8192 on the development data: ~40 s."""
    if not os.path.exists(path):
        corpus = default_corpus(data_dir, max_chars_per_file, natural_only)
        train_bpe(corpus, size, progress=progress).save(path)
    if (tok := load_tokenizer(path)).size != size:
        raise config.UserError(f"tokenizer {path} has size {tok.size}, not {size}: delete it")
    return tok

@dataclass
class TokenizerConfig:
    data_dir: str = config.DATA_DIR       # holds natural_text/ and the downstream task folders
    size: int = 8192                      # vocabulary size, the 100 sentinels included
    path: str = "cache/bpe8192.json"      # loaded if it exists, else trained and saved there
    natural_only: bool = False            # train on natural_text alone (see default_corpus)

def main(argv):
    cfg, t0 = config.parse(TokenizerConfig, argv, doc=__doc__), time.time()
    config.check_range("size", cfg.size, FIRST_MERGE_ID + Vocab.num_sentinels)
    tok = get_tokenizer(**vars(cfg))  # the settings are get_tokenizer's arguments
    print(f"tokenizer {cfg.path}: size {tok.size}, ready in {time.time() - t0:.1f} s")

if __name__ == "__main__":
    config.main(main)
