"""tasks.py: every synthetic pre-training task of the paper as a seeded, fast example generator.

Implements PAPER.md §3 (the 18 simple tasks §3.0-3.1, LIME §3.2, nonsense summarisation §3.3 + Appendix A,
the nesting-dependency language §3.4), T5 span corruption (used by `nesting_language` and by the `natural`
baseline over <data_dir>/natural_text/), mixtures 'a+b+c', deterministic train/validation streams and batching.

    python tasks.py --task=set --n=3            # print examples: ids and the role of each special id
    python tasks.py --task=lime --vocab=32100   # any task name or mixture; --tokenizer=path for text tasks
    python tasks.py --bench                     # examples/s per task on one core
    python -m pytest -q tests/test_tasks.py

Choices made where the original is unverified or accidental (each marked "Choice:" below):
* Content ids are 2..n-101 (T5: 2..31999): every id but pad, eos and the sentinels. unk=2 is included because
  the original drew it (PAPER §3.0). `n_task_tokens` keeps the first n of them (random-token tasks only).
* Without a tokenizer, words (task names, yes/no, digits, nonsense words) map to ids by `word_id`: the word's
  index in the fixed list `WORDS`, wrapped onto 3..n-101. At n=32100 the task-name prefixes and yes/no use the
  exact T5 ids of PAPER §3.0; numbers are one token per decimal digit (T5 ids for them are not known).
* Union and friends list their output in first-occurrence order (a then b), not CPython set order.
* LIME lists the rule variables in first-occurrence order (the original used set order).
* Nesting language: types map to content ids from 3 upward (unk skipped), head 2t / dependent 2t+1; sentence
  lengths follow [RT]'s own empirical Wikipedia-en table; chunks of the sentence stream are span-corrupted.
* Nonsense summaries are " ".join(lines).lower() as [K]'s reader builds them ([R]'s conversion is unverified).
* natural: windows start at a uniformly random character of the corpus and run on into following documents.
Speed (python tasks.py --bench, one core): 9k-40k examples/s for each simple task, ~13k for LIME, ~5k for
nonsense_summary and ~3k for nesting_language without a tokenizer; text tasks are then bound by tokenizer.encode.
"""
import ast
import bisect
import itertools
import os
import random
import sys
import time
from array import array
from collections import Counter
from functools import lru_cache

import torch

from tokenizer import Vocab

EOS = Vocab.eos_id
T5_SIZE = 32100  # at this size, with no tokenizer, we use the T5 SentencePiece ids of PAPER §3.0


# ----------------------------------------------------------------------------- vocabulary and words
def content_ids(vocab, n_task_tokens=None):
    """Ids a task may draw as random content: unk=2 .. n-101 (T5: V = {2..31999}, PAPER §3.0). Choice: unk is
    included, as in the original."""
    ids = list(range(vocab.unk_id, vocab.size - vocab.num_sentinels))
    if n_task_tokens is not None:
        if not 1 <= n_task_tokens <= len(ids):
            raise ValueError(f"n_task_tokens={n_task_tokens} must be in 1..{len(ids)} for vocabulary size {vocab.size}")
        ids = ids[:n_task_tokens]  # the vocabulary ablation restricts to the first n content ids (PAPER §6)
    return ids


_L26 = "abcdefghijklmnopqrstuvwxyz"
# Appendix A.1: word i spells i in base 26, least-significant letter first (aaa, baa, ..., hkh).
NONSENSE_WORDS = [_L26[i % 26] + _L26[i // 26 % 26] + _L26[i // 676 % 26] for i in range(5000)]
SIMPLE_ORIG = {  # paper name -> the name the original generator wrote as the task prefix (PAPER §3.0)
    "identity": "copy", "set": "set", "delete": "delete", "sort": "sort", "union": "union", "replace": "replace",
    "duplicate": "duplicate", "intersect": "intersect", "reverse": "reverse", "deduplicate": "deduplicate",
    "search": "search", "longest_word": "longest_word", "length": "length", "count": "count",
    "first_token": "first_char", "last_token": "last_char", "set1_minus_set2": "set_1_minus_2",
    "set2_minus_set1": "set_2_minus_1"}
T5_PREFIX = {  # PAPER §3.0, decoded from the T5 id table [V]
    "copy": [2405], "set": [356], "delete": [9268], "sort": [1843], "union": [7021], "replace": [3601],
    "duplicate": [19197], "intersect": [27806], "reverse": [7211], "search": [960], "length": [2475],
    "count": [3476], "deduplicate": [20, 26, 413, 26221], "longest_word": [14783, 834, 6051],
    "first_char": [166, 834, 4059], "last_char": [336, 834, 4059],
    "set_1_minus_2": [356, 834, 536, 834, 14078, 834, 357], "set_2_minus_1": [356, 834, 357, 834, 14078, 834, 536]}
T5_YES, T5_NO = [4273], [150]  # "▁yes", "▁no"


def _kw(tid, base):
    return f"__{tid}__{base}__"  # Appendix A.3: keyword tokens are "__" + task id + "__" + base + "__"


# (task id, class name, keyword base names) of the 16 transformations, in the list order of Appendix A.5.
_KEY10 = [f"keyword_{i}" for i in range(10)]
_CLS9 = [f"class_{c}_kw_{j}" for c in range(3) for j in range(3)]
_NUM100 = [str(i) for i in range(100)]
_T_SPECS = [
    ("d3", "CopyKeywordOneSentence", _KEY10), ("d4", "CopyKeywordMultipleSentences", _KEY10),
    ("d5", "CopyKeywordMultipleSentencesShuffled", _KEY10), ("d6", "CopyKeywordMultipleSentencesSorted", _KEY10),
    ("d7", "CopyQuoted", ["begin_quote", "end_quote"]), ("d8", "CopyBulleted", ["bullet"]),
    ("d10", "ClassifyKeyword", _KEY10), ("d11", "ReplaceClassKeyword", _CLS9),
    ("d12", "MajorityKeyword", ["keyword_1", "keyword_2"]), ("d13", "TopicSegregation", _CLS9),
    ("d14", "ThresholdNumber", _NUM100), ("d16", "LargestNumber", _NUM100),
    ("d18", "ParaphraseWords", [f"src_{i}" for i in range(20)]
     + [f"target_{i}_{j}" for i in range(20) for j in range(3)]),
    ("d19", "JoinClauses", [f"join_{i}" for i in range(5)]), ("d20", "BreakClauses", [f"join_{i}" for i in range(5)]),
    ("d21", "TruncateSentence", _KEY10)]
# Every word a task can emit, in a fixed order: its index is the word's id rule when there is no tokenizer.
# Simple-task words come first so that they stay collision-free even in small vocabularies.
WORDS = list(dict.fromkeys(
    list(SIMPLE_ORIG.values()) + ["yes", "no"] + _NUM100 + ["."]
    + "the keyword was positive negative occurred more number of times section above or equal to threshold below "
      "largest is combined sentence".split()
    + [_kw(t, b) for t, _, bases in _T_SPECS for b in bases]
    + [_kw(t, f"class_{c}") for t in ("d11", "d13") for c in range(3)]
    + NONSENSE_WORDS))
_WORD_INDEX = {w: i for i, w in enumerate(WORDS)}


def word_id(word, vocab):
    """Choice: word-level id without a tokenizer: 3 + (index in WORDS) mod (n-103), i.e. within 3..n-101."""
    return 3 + _WORD_INDEX[word] % (vocab.size - vocab.num_sentinels - 3)


class _Ctx:
    """What the generators share: length range, content ids, special ids, and how words become ids."""

    def __init__(self, vocab, tokenizer, lo, hi, n_task_tokens):
        self.vocab, self.tok, self.lo, self.hi = vocab, tokenizer, lo, hi
        self.V = content_ids(vocab, n_task_tokens)
        s = vocab.sentinel  # PAPER §3.0: <extra_id_0> name separator, _1 word divider, _2 argument separator, _3 empty
        self.name_sep, self.div, self.sep, self.empty = s(0), s(1), s(2), s(3)
        self.t5 = tokenizer is None and vocab.size == T5_SIZE
        self.yes, self.no = (T5_YES, T5_NO) if self.t5 else (self.text("yes"), self.text("no"))

    def rand(self, rng, n):  # rand(n): n iid uniform content tokens (random.choices, as the original)
        return rng.choices(self.V, k=n)

    def text(self, s):  # a string as ids: the tokenizer when given, else one id per whitespace-separated word
        return self.tok.encode(s) if self.tok is not None else [word_id(w, self.vocab) for w in s.split()]

    def number(self, n):  # Choice: without a tokenizer, one token per decimal digit
        if self.tok is None:
            return [word_id(d, self.vocab) for d in str(n)]
        ids = self.tok.encode(str(n))  # the original dropped a leading lone '▁' (id 3); we drop a blank piece
        return ids[1:] if len(ids) > 1 and not self.tok.decode(ids[:1]).strip() else ids

    def prefix(self, orig_name):  # the task name as the original spelled it ("copy" for identity)
        if self.t5:
            return T5_PREFIX[orig_name]  # exact T5 ids, so a T5-vocabulary run sees the paper's inputs
        return self.tok.encode(orig_name) if self.tok is not None else [word_id(orig_name, self.vocab)]


# ----------------------------------------------------------------------------- sampler primitives (PAPER §3.0)
def _pos_partition(rng, n, k):
    """pos_partition(n, k) = multinomial(n-k, uniform over k) + 1, every part >= 1: (7, 3) -> e.g. [2, 4, 1]."""
    parts = [1] * k  # the +1 that keeps every part non-empty
    for j in rng.choices(range(k), k=n - k):  # n-k balls into k uniform bins = the multinomial, without numpy
        parts[j] += 1
    return parts


def _runs(rng, n, types, shuffle):
    """Token types[j] repeated part_j times (pos_partition), shuffled for set/sort, kept as runs for deduplicate."""
    a = []
    for t, m in zip(types, _pos_partition(rng, n, len(types))):
        a += [t] * m  # run j: type j repeated part_j times
    if shuffle:
        rng.shuffle(a)  # set and sort see the multiset in random order; deduplicate keeps the runs
    return a


def _index(a, b):
    """First i with a[i:i+len(b)] == b, else -1. A C-level byte search on int32 arrays; hits not aligned to a
    token boundary are skipped."""
    A, B = array("i", a).tobytes(), array("i", b).tobytes()  # ~10x faster than a Python loop over slices
    i = A.find(B)
    while i > 0 and i % 4:  # a match starting inside a 4-byte token is not a token-level match
        i = A.find(B, i + 1)
    return i // 4 if i >= 0 else -1


def _query_pos(c, rng):
    """POS (generate_at_least_one_query_in_seq_data, proportion 0.5): q occurs r >= 1 times in a.
    q=[4, 5], s=6, r=2, gaps=[1, 0, 1] -> a=[9, 4, 5, 4, 5, 8]."""
    T = c.hi - 1  # the argument separator takes one slot of the body
    qlen = rng.randint(1, T // 3)  # max query = T / (1 + 1/0.5): the query is at most half the sequence
    slen = rng.randint(2 * qlen, T - qlen)
    q = c.rand(rng, qlen)
    r = rng.randint(1, slen // qlen)  # number of planted copies of q
    gaps = [0] * (r + 1)  # partition(slen - r*qlen, r+1): zeros allowed
    for j in rng.choices(range(r + 1), k=slen - r * qlen):
        gaps[j] += 1
    a = c.rand(rng, gaps[0])
    for g in gaps[1:]:
        a += q + c.rand(rng, g)  # copy of q, then the next gap of random filler
    return a, q


def _query_neg(c, rng):
    """NEG (generate_no_query_in_seq_data): q does not occur in a. Like the original, resample while the string
    of q's ids is a substring of a's (slightly stricter than a token-level test)."""
    if rng.random() < 0.01:  # 1%: a query longer than the sequence
        qlen = rng.randint(min(c.lo + 1, c.hi), c.hi)
        q = c.rand(rng, qlen)
        return c.rand(rng, rng.randint(0, qlen - 1)), q
    slen = rng.randint(c.lo, c.hi)
    qlen = rng.randint(c.lo, slen)  # often slen+qlen+1 > hi: the caller's length rejection then resamples
    while True:
        q, a = c.rand(rng, qlen), c.rand(rng, slen)
        if ", ".join(map(str, q)) not in ", ".join(map(str, a)):  # the original's str(q)[1:-1] in str(a)
            return a, q


def _set_op_args(c, rng):
    """tot~U{lo-1..hi-1}, n1~U{0..tot}; a, b draw from a pool of tot//2 distinct ids, so they overlap."""
    tot = rng.randint(c.lo - 1, c.hi - 1)  # -1: the argument separator
    n1 = rng.randint(0, tot)  # a may be empty (then union = b, intersect = empty)
    pool = rng.sample(c.V, min(tot // 2, len(c.V)))  # clamped only when n_task_tokens is tiny
    return rng.choices(pool, k=n1), rng.choices(pool, k=tot - n1)


# ----------------------------------------------------------------------------- the 18 simple tasks (PAPER §3.1)
# Each task returns (a, b or None, target); the body is a, or a + [<extra_id_2>] + b for binary tasks.
# Six unary tasks share the plain body n~U{lo..hi}, a = rand(n); their outputs, worked on a=[5, 9, 7]:
PLAIN = {
    "identity": lambda c, a, b: a,  # -> [5, 9, 7] (prefix "copy", PAPER §3.0)
    "reverse": lambda c, a, b: a[::-1],  # -> [7, 9, 5]
    "duplicate": lambda c, a, b: [t for t in a for _ in (0, 1)],  # -> [5, 5, 9, 9, 7, 7]
    "first_token": lambda c, a, b: a[:1],  # -> [5] (prefix "first_char")
    "last_token": lambda c, a, b: a[-1:],  # -> [7] (prefix "last_char")
    "length": lambda c, a, b: c.number(len(a)),  # -> the tokens of "3" (T5: 22 -> [1630], "▁22")
}


def _plain(c, rng):
    return c.rand(rng, rng.randint(c.lo, c.hi)), None


def t_set(c, rng):
    """n=6, k=3 types [9, 7, 5], parts [3, 2, 1], shuffled a=[9, 7, 9, 5, 7, 9] -> first occurrences [9, 7, 5]."""
    n = rng.randint(c.lo, c.hi)
    a = _runs(rng, n, c.rand(rng, rng.randint(1, n)), shuffle=True)  # k~U{1..n}; types may repeat
    return a, None, list(dict.fromkeys(a))


def t_deduplicate(c, rng):
    """As set but runs kept: a=[5, 9, 9, 9, 7, 9] -> [5, 9, 7, 9]."""
    n = rng.randint(c.lo, c.hi)
    a = _runs(rng, n, c.rand(rng, rng.randint(1, n)), shuffle=False)  # same sampler as set, unshuffled
    return a, None, [t for i, t in enumerate(a) if i == 0 or a[i - 1] != t]


def t_longest_word(c, rng):
    """Words joined by <extra_id_1>: [5, 9, D, 7, 8, D, 4, 3] -> [5, 9] (the first of the longest)."""
    W = rng.randint(1, c.hi // 2)  # number of words
    m = rng.randint(max(c.lo - (W - 1), W), c.hi - (W - 1))  # non-divider tokens
    lens = _pos_partition(rng, m, W)  # word lengths >= 1
    toks = c.rand(rng, m)  # all word tokens in one choices() call (iid, so the same distribution)
    words = [toks[e - n:e] for n, e in zip(lens, itertools.accumulate(lens))]
    a = list(words[0])
    for w in words[1:]:
        a += [c.div] + w  # words joined by <extra_id_1>
    return a, None, max(words, key=len)  # max() keeps the earliest of equally long words


def t_count(c, rng):
    """a=[5, 9, 5, 7], b=[5] -> the tokens of "2" (the random fill may also hit q)."""
    s = rng.randint(c.lo - 2, c.hi - 2)  # -2 leaves room for the separator and the query
    q = rng.choice(c.V)
    m = rng.randint(0, s)  # planted copies; the count is uniform-ish over 0..s rather than ~0
    a = [q] * m + c.rand(rng, s - m)
    rng.shuffle(a)
    return a, [q], c.number(a.count(q))


def t_search(c, rng):
    """a=[5, 9, 7, 3], b=[9, 7] -> yes; b=[7, 9] -> no. POS and NEG with p=0.5 each."""
    a, b = _query_pos(c, rng) if rng.random() > 0.5 else _query_neg(c, rng)
    return a, b, c.yes if _index(a, b) >= 0 else c.no  # decided on the tokens, not on how they were sampled


def t_delete(c, rng):
    """a=[5, 9, 7, 9, 7], b=[9, 7] -> [5, 9, 7] (first occurrence only). POS p=0.75, NEG 0.25."""
    a, b = _query_pos(c, rng) if rng.random() > 0.25 else _query_neg(c, rng)
    i = _index(a, b)
    return a, b, a if i < 0 else a[:i] + a[i + len(b):]  # a unchanged when q does not occur


def t_sort(c, rng):
    """Order b=[7, 5, 9, 5]: key = last index in b (7->0, 9->2, 5->3); a=[5, 9, 7, 5] -> [7, 9, 5, 5]."""
    olen = rng.randint(min(c.lo // 2, (c.hi - 1) // 2), (c.hi - 1) // 2)  # min() only for min_len == max_len
    b = c.rand(rng, olen)  # the order; it may repeat tokens
    slen = rng.randint(olen, c.hi - 1 - olen)  # T - olen: sequence, separator and order fit in hi
    a = _runs(rng, slen, rng.choices(b, k=olen), shuffle=True)  # olen parts, each a token drawn from b
    key = {t: i for i, t in enumerate(b)}  # later duplicates overwrite: the last index counts
    return a, b, sorted(a, key=key.__getitem__)


def t_replace(c, rng):
    """a=[5, 9, 5, 7], b=[5, 8] (key 5 -> value 8) -> [8, 9, 8, 7]."""
    a = c.rand(rng, rng.randint(c.lo - 3, c.hi - 3))  # -3: separator, key, value
    k = rng.choice(list(dict.fromkeys(a)))  # uniform over the distinct tokens of a (original: set order)
    v = rng.choice(c.V)  # may equal k: then the target is a itself
    return a, [k, v], [v if t == k else t for t in a]


def _distinct(xs, ys, keep_if_in):
    ys = set(ys)  # hoisted: one set per example, not per token
    return [t for t in dict.fromkeys(xs) if (t in ys) == keep_if_in]  # dict.fromkeys: distinct, in order


# The four set operations share _set_op_args; outputs worked on a=[5, 9, 5, 7], b=[7, 9, 8].
# Choice: first-occurrence order (a, then b) instead of the original's CPython set-iteration order.
SET_OPS = {
    "union": lambda c, a, b: list(dict.fromkeys(a + b)),  # -> [5, 9, 7, 8]
    "intersect": lambda c, a, b: _distinct(a, b, True),  # -> [9, 7]; an empty result becomes [<extra_id_3>]
    "set1_minus_set2": lambda c, a, b: _distinct(a, b, False),  # -> [5]
    "set2_minus_set1": lambda c, a, b: _distinct(b, a, False),  # -> [8] (order of first occurrence in b)
}


def _wrap(name, out, sampler):  # a table's output function plus its shared sampler = one task function
    def fn(c, rng):
        a, b = sampler(c, rng)
        return a, b, out(c, a, b)
    fn.__name__ = name  # named for error messages
    return fn


SIMPLE = {name: globals().get("t_" + name) for name in SIMPLE_ORIG}  # name -> fn(c, rng), in the paper's order
SIMPLE.update({name: _wrap(name, out, _plain) for name, out in PLAIN.items()})
SIMPLE.update({name: _wrap(name, out, _set_op_args) for name, out in SET_OPS.items()})


def _simple_example(c, fn, prefix, rng):
    """input = prefix + [<extra_id_0>] + body, rejection-sampled until lo <= len(body) <= hi (generate_example)."""
    for _ in range(100_000):  # bounded, so an impossible length range fails loudly instead of hanging
        a, b, out = fn(c, rng)
        body = a if b is None else a + [c.sep] + b
        if c.lo <= len(body) <= c.hi:
            return prefix + [c.name_sep] + body, out or [c.empty]  # empty outputs become [<extra_id_3>]
    raise RuntimeError(f"{fn.__name__}: no body of length {c.lo}..{c.hi} in 100000 tries; widen min_len/max_len")


# ----------------------------------------------------------------------------- LIME (PAPER §3.2)
LIME_MODES = ("induct", "deduct", "abduct")


def lime_example(c, rng, mode):
    """Fresh alphabet: 24 upper (rule variables), 24 lower, 20 math ids. k=3 vars, 2k=6 variable draws, e.g.
    rule = [A, +, B, A, *, -] ; subst A: [x y], B: [+ z] -> subst_str = [A : [ x y ] B : [ + z ]],
    result = [x y + + z x y * -]. induct: prefix+result<sep>subst -> rule; deduct: prefix+rule<sep>subst -> result;
    abduct: prefix+rule<sep>result -> subst_str. prefix = <UPPER> vars <LOWER> 24 lower <MATH> 20 math <sep>."""
    col, sep, upp, lbr, low, mth, rbr = (c.vocab.sentinel(99 - i) for i in range(7))  # EXTRA_IDS[:7]
    for _ in range(1000):  # rejection sampling, as the original; 1000 misses means max_len cannot fit LIME
        al = rng.sample(c.V, 68)  # 68 distinct ids: is_original_vocab_division
        upper, lower, math = al[:24], al[24:48], al[48:]
        k = rng.randint(3, 5)  # variables available to the rule
        plen = rng.randrange(5, 20)  # math symbols in the rule: random.choice(range(5, 20))
        chars = rng.choices(upper[:k], k=2 * k)  # 2k variable occurrences; some of the k may go unused
        variables = list(dict.fromkeys(chars))  # Choice: first-occurrence order, the original used set order
        rule = chars + rng.choices(math, k=plen)
        rng.shuffle(rule)
        sub = {v: rng.choices(lower + math, k=rng.randint(2, 8)) for v in variables}  # gen_subst
        subst = [x for v in variables for x in (v, col, lbr, *sub[v], rbr)]  # v : [ s... ], commas removed
        result = [x for t in rule for x in sub.get(t, (t,))]  # every variable occurrence rewritten
        head = [upp, *variables, low, *lower, mth, *math, sep]  # only the variables actually used are listed
        if mode == "induct":
            src, tgt = head + result + [sep] + subst, rule
        elif mode == "deduct":
            src, tgt = head + rule + [sep] + subst, result
        else:
            src, tgt = head + rule + [sep] + result, subst
        # The original measured lengths before deleting the ',' between variable entries of subst_str.
        commas = len(variables) - 1
        if len(src) + commas * (mode != "abduct") <= c.hi and len(tgt) + commas * (mode == "abduct") <= c.hi:
            return src, tgt
    # the 68-id prefix alone is ~50 ids: inputs are 74-200 ids long (median 106-136 by mode, measured)
    raise ValueError(f"LIME ({mode}): no example of at most max_len={c.hi} ids in 1000 draws; LIME inputs "
                     "are 74-200 ids long, use max_len >= 128 (the paper's: 220)")


# ----------------------------------------------------------------------------- nonsense summarisation (Appendix A)
def _pick(lines, m, rng):
    return sorted(rng.sample(range(len(lines)), m))  # pick_lines(m): m distinct lines, ascending (A.4)


def _free(w, keep_last=1):
    """replaceable(line): positions <= L-1-keep_last whose token has no '_' (keywords are never overwritten)."""
    return [p for p in range(len(w) - keep_last) if "_" not in w[p]]


class Transform:
    """One of the 16 transformations: modify(lines, rng) edits token lists in place; output(lines, rng) -> strings."""

    def __init__(self, tid, name, bases):
        self.tid, self.name = tid, name
        self.keywords = [_kw(tid, b) for b in bases]  # the id prefix keeps every task's tokens disjoint
        self.kwset = set(self.keywords)

    def find(self, lines):
        """find(task) (A.4): (line index, keywords of this task in it) for each matching line, in document order."""
        return [(i, [w for w in line if w in self.kwset])
                for i, line in enumerate(lines) if not self.kwset.isdisjoint(line)]

    def modify(self, lines, rng):
        t, K = self.tid, self.keywords
        if t in ("d3", "d10", "d14", "d21", "d11"):  # one line, one keyword drawn uniformly
            self._mark(lines, rng, 1, K)
        elif t in ("d4", "d5"):  # 3 lines, keywords with replacement
            self._mark(lines, rng, 3, K)
        elif t == "d12":  # m = 3 or 5 lines, keyword_1 or keyword_2 each
            self._mark(lines, rng, 2 * rng.randint(1, 2) + 1, K)
        elif t == "d13":  # m~U{2..5} lines, one class keyword each
            self._mark(lines, rng, rng.randint(2, 5), K)
        elif t == "d18":  # only src_i go into inputs; target_i_j appear in summaries only
            self._mark(lines, rng, 1, K[:20])
        elif t in ("d6", "d16", "d19"):  # distinct keywords, the i-th picked line gets the i-th drawn
            m = rng.randint(1, 4) if t == "d16" else 3
            for i, kw in zip(_pick(lines, m, rng), rng.sample(K, m)):
                w = lines[i]
                w[rng.choice(_free(w, 2 if t == "d19" else 1))] = kw  # d19: p <= L-3
        elif t == "d7":  # insert begin/end quote around w[b:e]; b >= 1 if w[0] is a keyword (keeps a bullet first)
            w = lines[_pick(lines, 1, rng)[0]]
            b = rng.randint(0 if "_" not in w[0] else 1, len(w) - 1)
            e = rng.randint(b + 1, len(w))
            w[:] = w[:b] + [K[0]] + w[b:e] + [K[1]] + w[e:]
        elif t == "d8":  # prepend the bullet, nothing replaced
            lines[_pick(lines, 1, rng)[0]].insert(0, K[0])
        elif t == "d20":  # one line, 2 distinct joiners at 2 distinct replaceable positions
            w = lines[_pick(lines, 1, rng)[0]]
            for p, kw in zip(rng.sample(_free(w), 2), rng.sample(K, 2)):
                w[p] = kw

    @staticmethod
    def _mark(lines, rng, m, choices):  # m lines, each gets one keyword drawn with replacement
        for i in _pick(lines, m, rng):
            w = lines[i]
            w[rng.choice(_free(w))] = rng.choice(choices)  # overwrite: the line length does not change

    def output(self, lines, rng):
        t, found, J = self.tid, self.find(lines), " ".join
        if t in ("d3", "d4"):  # the marked lines as they stand, document order
            return [J(lines[i]) for i, _ in found]
        if t == "d5":  # shuffled when the summary is built: the target is not a function of the input
            out = [J(lines[i]) for i, _ in found]
            rng.shuffle(out)
            return out
        if t == "d6":  # sorted by keyword (string order = index order, single digits)
            return [J(lines[i]) for i, kws in sorted(found, key=lambda f: f[1][0])]
        i, kws = found[0]  # the remaining tasks read their first (for most, only) marked line
        w, kw = lines[i], kws[0]
        if t == "d7":  # the tokens strictly between the quotes; " ." appended unless it ends with '.'
            s = J(w[w.index(self.keywords[0]) + 1:w.index(self.keywords[1])])
            return [s if s.endswith(".") else s + " ."]
        if t == "d8":
            return [J(w[1:])]  # the bullet is always first: d7 never quotes in front of it
        if t == "d10":  # keyword_0..4 positive, 5..9 negative
            return ["the keyword was " + ("positive" if self.keywords.index(kw) < 5 else "negative") + " ."]
        if t == "d11":  # the keyword replaced by its class token __d11__class_c__
            cls = _kw(t, f"class_{self.keywords.index(kw) // 3}")
            return [J(cls if x == kw else x for x in w)]
        if t == "d12":  # m is odd, so there is never a tie
            top = Counter(k for _, ks in found for k in ks).most_common(1)[0][0]
            return [f"The keyword {self.keywords.index(top) + 1} occurred more number of times ."]
        if t == "d13":  # 3 headers (no period), each followed by its class's lines in document order
            out = []
            for cl in range(3):
                out.append(f"section {_kw(t, f'class_{cl}')}")
                out += [J(lines[i]) for i, ks in found if self.keywords.index(ks[0]) // 3 == cl]
            return out
        if t == "d14":  # the number is read from the digits inside the token
            return ["the number was above or equal to threshold ." if int(kw.split("__")[2]) >= 50
                    else "the number was below threshold ."]
        if t == "d16":  # the maximum, written as a bare decimal
            return [f"The largest number is {max(int(ks[0].split('__')[2]) for _, ks in found)} ."]
        if t == "d18":  # paraphrase index j drawn when the summary is built
            src = int(kw.split("_")[-3])
            tgt = _kw(t, f"target_{src}_{rng.randrange(3)}")
            return [J(tgt if x == kw else x for x in w)]
        if t == "d19":  # each joiner + its clause up to (excluding) the line's last token
            s = "The combined sentence is "
            for i, ks in found:
                w = lines[i]
                p = w.index(ks[0])
                s += ks[0] + " " + J(w[p + 1:-1]) + " "
            return [s + "."]
        if t == "d20":  # p < q: A = w[:q] + '.', B = w[:p] + w[q:L-1] + '.'
            p, q = sorted(w.index(k) for k in kws)
            return [J(w[:q] + ["."]), J(w[:p] + w[q:-1] + ["."])]
        return [J(w[:w.index(kw)] + ["."])]  # d21: the tokens before the keyword


TRANSFORMS = [Transform(*spec) for spec in _T_SPECS]


def nonsense_document(rng):
    """One "ourtasks-nonsense" document (A.2, A.5): 7..13 lines of 5..15 words + " .", an ordered triple of
    distinct transformations applied in order, then their outputs concatenated. Returns (article_lines,
    summary_lines), both lists of strings, not yet lowercased."""
    lines = [rng.choices(NONSENSE_WORDS, k=rng.randint(5, 15)) + ["."] for _ in range(rng.randint(7, 13))]
    triple = rng.sample(TRANSFORMS, 3)  # all 3360 ordered triples equally likely
    for t in triple:
        t.modify(lines, rng)  # order matters: insertions shift positions, keywords block later edits
    summary = [s for t in triple for s in t.output(lines, rng)]  # outputs read the doc after all modifications
    return [" ".join(w) for w in lines], summary


def nonsense_example(c, rng):
    """input = " ".join(article).lower(), target = " ".join(summary).lower() ([K]'s reader), then to ids."""
    art, summ = nonsense_document(rng)  # no task tags, no separators between the three outputs (A.7)
    return c.text(" ".join(art).lower()), c.text(" ".join(summ).lower())


# ----------------------------------------------------------------------------- T5 span corruption, nesting language
def _segment(rng, n_items, n_segments):
    """T5 _random_segmentation: n_items split into n_segments non-empty parts at uniformly random cut points."""
    cuts = [0] + sorted(rng.sample(range(1, n_items), n_segments - 1)) + [n_items]  # = T5's shuffled boundaries
    return [b - a for a, b in zip(cuts, cuts[1:])]


def span_corrupt(tokens, vocab, rng, noise_density=0.15, mean_span=3):
    """T5 span_corruption (random_spans_noise_mask + noise_span_to_unique_sentinel), no EOS. Spans alternate
    kept/noise, starting with kept. [a b c d e f g h i j] with noise [d e] ->
    inputs [a b c <extra_id_0> f g h i j], targets [<extra_id_0> d e]."""
    n = len(tokens)
    if n < 2:
        raise ValueError("span corruption needs at least 2 tokens")
    n_noise = min(max(round(n * noise_density), 1), n - 1)  # round() is half-to-even, like np.round
    n_spans = max(round(n_noise / mean_span), 1)
    if n_spans > vocab.num_sentinels:
        raise ValueError(f"{n_spans} noise spans need more than {vocab.num_sentinels} sentinels; use shorter chunks")
    noise, keep = _segment(rng, n_noise, n_spans), _segment(rng, n - n_noise, n_spans)
    src, tgt, pos = [], [], 0
    for k in range(n_spans):  # kept span k, then noise span k: the sequence always ends in noise
        src += tokens[pos:pos + keep[k]]
        pos += keep[k]
        s = vocab.sentinel(k)  # the k-th noise span gets <extra_id_k> in both sequences
        src.append(s)
        tgt += [s] + tokens[pos:pos + noise[k]]
        pos += noise[k]
    return src, tgt


def span_tokens_length(inputs_length, noise_density=0.15, mean_span=3):
    """T5 random_spans_helper: raw chunk length whose corrupted input plus EOS fits inputs_length (512 -> 568)."""
    def inputs_len(t):  # kept tokens + one sentinel per span + EOS, clamped as in span_corrupt (T5 does not
        noise = min(max(round(t * noise_density), 1), t - 1)  # clamp here, which only matters below 10 tokens)
        return t - noise + max(round(noise / mean_span), 1) + 1
    t = inputs_length - 1
    while inputs_len(t + 1) <= inputs_length:
        t += 1
    return t


# Sentence lengths 0..60 of Ri & Tsuruoka's empirical Wikipedia-en fit ([RT] configs/languages/lib/
# empirical_distribution_sampler.libsonnet): the count at index L weighs length L.
WIKI_LENGTH_COUNTS = [0] * 6 + [
    303, 303, 342, 308, 275, 310, 337, 356, 340, 309, 321, 358, 319, 331, 343, 310, 310, 350, 284, 284, 307, 252,
    246, 255, 209, 207, 177, 168, 165, 128, 149, 133, 109, 123, 102, 99, 81, 81, 73, 60, 61, 44, 43, 43, 52, 39,
    26, 30, 29, 24, 34, 18, 8, 17, 15]
_LEN_CUM = list(itertools.accumulate(WIKI_LENGTH_COUNTS))


@lru_cache(maxsize=8)
def _zipf_cum(n_types):
    return list(itertools.accumulate(n_types // i for i in range(1, n_types + 1)))  # freq ∝ floor(V/i)


def nesting_sentence(rng, ids):
    """One sentence of the nesting-dependency language (PAPER §3.4, [RT] parenthesis_language.py). Type t has head
    ids[2t] and dependent ids[2t+1]. L=7 -> keep 3 or 4 Zipf types, e.g. [4, 0, 4] -> pairs (4 4)(0 0)(4 4);
    with the stack (open with p=0.4 or when empty, else close): (4 (0 0) (4 4) 4)."""
    n_types = len(ids) // 2  # T5 layout: 15998 types over 31997 ids (RT's 32000-symbol setting, halved)
    L = bisect.bisect(_LEN_CUM, rng.random() * _LEN_CUM[-1])  # the empirical length distribution, 6..60
    half = max(L // 2 + (rng.random() < 0.5), 1)  # the first floor(L/2) or floor(L/2)+1 types, 50/50
    pairs = [(ids[2 * t], ids[2 * t + 1]) for t in rng.choices(range(n_types), cum_weights=_zipf_cum(n_types), k=half)]
    out, stack = [], []
    while pairs:
        if not stack or rng.random() < 0.4:  # open the next head, or close the innermost open one
            h, d = pairs.pop()
            out.append(h)
            stack.append(d)
        else:
            out.append(stack.pop())
    return out + stack[::-1]  # close everything still open


def nesting_example(c, rng, ids, n_tokens):
    """Sentences concatenated (no EOS) and cut to n_tokens, starting at a random offset of the first sentence as
    T5's split_tokens chunks do, then span-corrupted."""
    first = nesting_sentence(rng, ids)
    toks = first[rng.randrange(len(first)):]  # a chunk of the stream, not always a sentence start
    while len(toks) < n_tokens:
        toks += nesting_sentence(rng, ids)
    return span_corrupt(toks[:n_tokens], c.vocab, rng)


class NaturalText:
    """Span corruption over tokenized <data_dir>/natural_text/<split>.txt (documents separated by blank lines).
    A window of n_tokens starts at a uniformly random character position of the corpus: its document is drawn with
    probability ∝ its length, the start uniformly inside it; short windows continue into the following documents.
    The file is read on first use, documents are tokenized lazily and cached as int32 arrays."""

    def __init__(self, path, tokenizer, vocab, n_tokens):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"natural task: {path} not found "
                                    "(data_dir must contain natural_text/{train,validation}.txt)")
        self.path, self.tok, self.vocab, self.n = path, tokenizer, vocab, n_tokens
        self.docs, self.cache = None, {}

    def tokens(self, d):
        if d not in self.cache:
            self.cache[d] = array("i", self.tok.encode(self.docs[d]))  # int32: ~4 bytes per token cached
        return self.cache[d]

    def __call__(self, rng):
        if self.docs is None:  # read once, on first use, so building the task is cheap
            with open(self.path, encoding="utf-8") as f:
                self.docs = [d.strip() for d in f.read().split("\n\n") if d.strip()]
            self.cum = list(itertools.accumulate(len(d) for d in self.docs))
        d = bisect.bisect_right(self.cum, rng.randrange(self.cum[-1]))  # document ∝ its length
        toks = self.tokens(d)
        start = rng.randint(0, max(0, len(toks) - self.n))
        out = list(toks[start:start + self.n])
        for _ in range(len(self.docs)):  # concatenate following documents (no separator), as T5 packs them
            if len(out) >= self.n:
                break
            d = (d + 1) % len(self.docs)
            out += self.tokens(d)[:self.n - len(out)]
        return span_corrupt(out, self.vocab, rng)


# ----------------------------------------------------------------------------- tasks, streams, batches
TASKS = list(SIMPLE) + ["lime", "lime_induct", "lime_deduct", "lime_abduct", "nonsense_summary", "nesting_language",
                        "natural"]


class Task:
    """A named generator: example(rng) -> (source ids, target ids), EOS appended to both (PAPER §3.0, §6).
    `split` only matters for `natural`, which reads a different file per split."""

    def __init__(self, name, fn, fn_validation=None, parts=None):
        self.name, self.parts = name, parts or [name]
        self._fns = {"train": fn, "validation": fn_validation or fn}

    def example(self, rng, split="train"):
        src, tgt = self._fns[split](rng)
        return src + [EOS], tgt + [EOS]  # the original appended EOS=1 at load time to both sides


def _mixture(name, tasks):
    """Equal-rate mixture (seqio default_rate=1): each example picks a component uniformly."""
    def pick(split):
        fns = [t._fns[split] for t in tasks]
        return lambda rng: fns[rng.randrange(len(fns))](rng)  # the choice comes from the example's own rng
    return Task(name, pick("train"), pick("validation"), parts=[p for t in tasks for p in t.parts])


def get_task(name, vocab, *, tokenizer=None, data_dir=None, min_len=10, max_len=220, n_task_tokens=None):
    """Build a task or an 'a+b+c' mixture. min_len/max_len bound the simple tasks' body; max_len also bounds LIME's
    input and target (the original's 0..220) and is the corrupted input length, EOS included, of
    nesting_language and natural. Nonsense summaries are not length-limited (the original kept 1024/1024)."""
    names = [s.strip() for s in name.split("+")]
    unknown = [s for s in names if s not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {TASKS}, or mix them as 'a+b+c'")
    if not 4 <= min_len <= max_len:
        raise ValueError(f"need 4 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    if tokenizer is not None and tokenizer.size != vocab.size:
        raise ValueError(f"tokenizer size {tokenizer.size} != vocab size {vocab.size}")
    c = _Ctx(vocab, tokenizer, min_len, max_len, n_task_tokens)  # shared by all components of a mixture
    tasks = [_build(s, c, data_dir) for s in names]
    return tasks[0] if len(tasks) == 1 else _mixture(name, tasks)


def _build(name, c, data_dir):
    if name in SIMPLE:
        fn, prefix = SIMPLE[name], c.prefix(SIMPLE_ORIG[name])  # prefix encoded once, not per example
        return Task(name, lambda rng: _simple_example(c, fn, prefix, rng))
    if name.startswith("lime"):
        if len(c.V) < 68:
            raise ValueError(f"LIME draws 68 distinct ids; n_task_tokens={len(c.V)} is too small")
        if name == "lime":
            return _mixture("lime", [_build("lime_" + m, c, data_dir) for m in LIME_MODES])
        mode = name.split("_")[1]
        return Task(name, lambda rng: lime_example(c, rng, mode))  # LIME has no task-name prefix
    if name == "nonsense_summary":
        return Task(name, lambda rng: nonsense_example(c, rng))
    n_tokens = span_tokens_length(c.hi)  # raw chunk whose corrupted input is at most max_len ids
    if name == "nesting_language":
        ids = [i for i in c.V if i != c.vocab.unk_id]  # Choice: unk is not a nesting symbol
        if len(ids) < 2:
            raise ValueError("nesting_language needs at least 2 non-unk content ids")
        return Task(name, lambda rng: nesting_example(c, rng, ids, n_tokens))
    if data_dir is None or c.tok is None:  # name == "natural"
        raise ValueError("task 'natural' needs data_dir (holding natural_text/{train,validation}.txt) and a tokenizer")
    train, val = (NaturalText(os.path.join(data_dir, "natural_text", f"{s}.txt"), c.tok, c.vocab, n_tokens)
                  for s in ("train", "validation"))
    return Task(name, train, val)


class TaskStream:
    """Example i of a split is generated from random.Random(f"{split}/{seed}/{i}"): it depends only on
    (seed, split, i), so batch size and restarts do not change the data, and the splits never share a seed."""

    def __init__(self, task, seed, split="train", start=0):
        if split not in ("train", "validation"):
            raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
        self.task, self.seed, self.split, self.position = task, int(seed), split, int(start)

    def example(self, i):  # str seeds are hashed with sha512: stable across runs and Python processes
        return self.task.example(random.Random(f"{self.split}/{self.seed}/{i}"), self.split)

    def next_examples(self, n):
        out = [self.example(i) for i in range(self.position, self.position + n)]
        self.position += n
        return out


def collate(examples, max_src_len, max_tgt_len, pad_id=0, pad_to_max=False):
    """Pad to the longest sequence in the batch (or to the max lengths if pad_to_max, for fixed shapes), cutting
    longer ones as seqio's trim does (the cut loses the EOS). Returns ({"input_ids", "attention_mask", "labels"
    (-100 on padding)}, number of examples whose source or target was cut)."""
    if not examples:
        raise ValueError("collate needs at least one example")
    n_cut = sum(len(s) > max_src_len or len(t) > max_tgt_len for s, t in examples)  # logged by the trainer
    S = max_src_len if pad_to_max else min(max_src_len, max(len(s) for s, _ in examples))
    T = max_tgt_len if pad_to_max else min(max_tgt_len, max(len(t) for _, t in examples))
    src = [s[:S] for s, _ in examples]
    tgt = [t[:T] for _, t in examples]  # building Python lists then one tensor() is faster than row writes
    return {"input_ids": torch.tensor([s + [pad_id] * (S - len(s)) for s in src]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (S - len(s)) for s in src]),
            "labels": torch.tensor([t + [-100] * (T - len(t)) for t in tgt])}, n_cut


# ----------------------------------------------------------------------------- command line
def special_roles(task, vocab):
    """{id: role} of the special ids a task can emit, so printed examples can be read."""
    roles = {vocab.pad_id: ["pad"], EOS: ["EOS"], vocab.unk_id: ["unk (drawn as ordinary content)"]}
    s = vocab.sentinel  # a mixture can give one sentinel several roles: they are joined with " / "
    if any(p in SIMPLE for p in task.parts):
        for k, r in enumerate(["task-name separator", "word divider", "argument separator", "empty output"]):
            roles.setdefault(s(k), []).append(f"<extra_id_{k}> {r}")
    if any(p.startswith("lime") for p in task.parts):
        for k, r in enumerate([":", "<sep>", "<UPPER>", "[", "<LOWER>", "<MATH>", "]"]):
            roles.setdefault(s(99 - k), []).append(f"<extra_id_{99 - k}> LIME '{r}'")
    if any(p in ("nesting_language", "natural") for p in task.parts):
        for k in range(vocab.num_sentinels):
            roles.setdefault(s(k), []).append(f"<extra_id_{k}> span sentinel {k}")
    return {i: " / ".join(r) for i, r in roles.items()}


def bench(vocab, tokenizer=None, data_dir=None, seconds=0.5):
    """Examples/s of each task on one core, seeding a fresh Random per example as TaskStream does."""
    names = list(SIMPLE) + ["lime_induct", "lime_deduct", "lime_abduct", "lime", "nonsense_summary", "nesting_language"]
    if tokenizer is not None and data_dir is not None:
        names.append("natural")
    for name in names:
        task, n, t0 = get_task(name, vocab, tokenizer=tokenizer, data_dir=data_dir), 0, time.perf_counter()
        task.example(random.Random(-1))  # loads files / caches outside the timed loop
        while time.perf_counter() - t0 < seconds:
            for _ in range(50):  # check the clock every 50 examples only
                task.example(random.Random(f"train/0/{n}"))
                n += 1
        print(f"{name:18s} {n / (time.perf_counter() - t0):9.0f} examples/s")


def main(argv):
    cfg = dict(task="set", n=3, seed=0, split="train", vocab=T5_SIZE, min_len=10, max_len=220, n_task_tokens=None,
               data_dir=None, tokenizer=None, bench=False)
    for arg in argv:  # --key=value, as the other scripts; a bare --flag means True
        key, _, val = arg.lstrip("-").partition("=")
        if key not in cfg:
            sys.exit(f"unknown option --{key}; valid: {', '.join('--' + k for k in cfg)}")
        try:
            cfg[key] = ast.literal_eval(val) if val else True
        except (ValueError, SyntaxError):
            cfg[key] = val  # plain strings: task names, paths
    vocab = Vocab(cfg["vocab"])
    tok = None
    if cfg["tokenizer"]:
        from tokenizer import load_tokenizer
        tok = load_tokenizer(cfg["tokenizer"])
        vocab = tok  # a tokenizer is a Vocab: its size decides the layout
    if cfg["bench"]:
        return bench(vocab, tok, cfg["data_dir"])
    task = get_task(cfg["task"], vocab, tokenizer=tok, data_dir=cfg["data_dir"], min_len=cfg["min_len"],
                    max_len=cfg["max_len"], n_task_tokens=cfg["n_task_tokens"])
    roles, seen = special_roles(task, vocab), set()
    for src, tgt in TaskStream(task, cfg["seed"], cfg["split"]).next_examples(cfg["n"]):
        print(f"source ({len(src)} ids): {src}\ntarget ({len(tgt)} ids): {tgt}\n")
        seen.update(i for i in src + tgt if i in roles)
    print("special ids:\n" + "\n".join(f"  {i:6d}  {roles[i]}" for i in sorted(seen)))


if __name__ == "__main__":
    main(sys.argv[1:])
