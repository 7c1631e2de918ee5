"""tasks.py: every synthetic pre-training task of the paper, as a seeded and fast example generator.

The simple tasks, LIME, nonsense summarisation, the nesting language (Sections 3.1-3.4, Appendix A),
T5 span corruption of natural_text/ (the natural baseline), mixtures 'a+b', streams and batching.
Run: python tasks.py --task=set --n=3 prints examples (-h: settings).
Our choices where the original is unverified or accidental:
* Content ids are 2..n-101 (T5: 2..31999), unk=2 included as the original drew it.
* Without a tokenizer a word is its index in WORDS wrapped onto 3..n-101 (T5's ids at n=32100 for
  names and yes/no); a number is a token per digit.
* Set results and LIME's rule variables come in first-occurrence order.
* Nesting language: head ids[2t], dependent ids[2t+1] (unk skipped); Ri & Tsuruoka's lengths.
* Nonsense summaries are " ".join(lines).lower(); natural windows start at a random character.
Reading order: model.py, tokenizer.py, tasks.py (here), config.py, ... Next: config.py.
"""
import bisect, itertools, os, random
from array import array
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import torch
import config
from tokenizer import Vocab, load_tokenizer

EOS, T5_SIZE, LIME_MODES = Vocab.eos_id, 32100, ("induct", "deduct", "abduct")

def content_ids(vocab, n_task_tokens=None):  # unk=2..n-101 (T5: ..31999), the first n if set
    ids = list(range(vocab.unk_id, vocab.size - vocab.num_sentinels))
    if n_task_tokens is not None and not 1 <= n_task_tokens <= len(ids):
        raise config.UserError(f"--n_task_tokens={n_task_tokens} is not in 1..{len(ids)}")
    return ids[:n_task_tokens]

def word_id(word, vocab):  # our choice without a tokenizer: 3 + (index in WORDS) mod (n-103)
    return 3 + _WORD_INDEX[word] % (vocab.size - vocab.num_sentinels - 3)

def _index(a, b):  # the first i with a[i:i+len(b)] == b, else -1
    return next((i for i, t in enumerate(a) if t == b[0] and a[i:i + len(b)] == b), -1)

class Gen:
    """A task's settings (lengths lo..hi, content ids V, special ids) and generators. A simple task
    gives (a, b or None, target): its body is a or a + [<extra_id_2>] + b (on small inputs here)."""

    def __init__(self, vocab, tokenizer, lo, hi, n_task_tokens):
        self.vocab, self.tok, self.lo, self.hi = vocab, tokenizer, lo, hi
        self.V = content_ids(vocab, n_task_tokens)
        # <extra_id_0> ends the task name, _1 divides words, _2 separates arguments, _3 is "empty"
        self.name_sep, self.div, self.sep, self.empty = (vocab.sentinel(k) for k in range(4))
        self.t5 = tokenizer is None and vocab.size == T5_SIZE  # then T5's ids for names, yes/no
        self.yes, self.no = ([4273], [150]) if self.t5 else (self.text("yes"), self.text("no"))

    def rand(self, rng, n):  # n iid uniform content tokens (random.choices, as the original)
        return rng.choices(self.V, k=n)

    def text(self, s):  # the tokenizer's ids, else one id per whitespace-separated word
        return self.tok.encode(s) if self.tok else [word_id(w, self.vocab) for w in s.split()]

    def number(self, n):  # our choice without a tokenizer: one token per decimal digit
        if self.tok is None:
            return self.text(" ".join(str(n)))
        ids = self.tok.encode(str(n))  # the original dropped a lone leading '▁'; we a blank piece
        return ids[1:] if len(ids) > 1 and not self.tok.decode(ids[:1]).strip() else ids

    def partition(self, rng, n, k, low=1):  # multinomial(n-k*low, uniform over k) + low:
        hits = Counter(rng.choices(range(k), k=n - k * low))  # (7, 3) -> [2, 4, 1]
        return [low + hits[j] for j in range(k)]

    def runs(self, rng, n, types):  # types[j] repeated part_j times
        return [t for t, m in zip(types, self.partition(rng, n, len(types))) for _ in range(m)]

    def query(self, rng, p_neg):  # (a, q): q planted r >= 1 times in a, or with p_neg absent
        if rng.random() <= p_neg:
            if rng.random() < 0.01:  # 1%: a query longer than the sequence
                q = self.rand(rng, qlen := rng.randint(min(self.lo + 1, self.hi), self.hi))
                return self.rand(rng, rng.randint(0, qlen - 1)), q
            slen = rng.randint(self.lo, self.hi)
            qlen = rng.randint(self.lo, slen)  # slen+qlen+1 > hi is often rejected: resampled
            while True:
                q, a = self.rand(rng, qlen), self.rand(rng, slen)
                if ", ".join(map(str, q)) not in ", ".join(map(str, a)):
                    return a, q
        qlen = rng.randint(1, (self.hi - 1) // 3)  # at most half the body, separator excluded
        slen = rng.randint(2 * qlen, self.hi - 1 - qlen)
        q = self.rand(rng, qlen)
        r = rng.randint(1, slen // qlen)  # planted copies of q, in r+1 gaps of filler
        gaps = self.partition(rng, slen - r * qlen, r + 1, low=0)
        return self.rand(rng, gaps[0]) + [x for g in gaps[1:] for x in q + self.rand(rng, g)], q

    def unary(self, rng, out):  # the six unary tasks' body: n~U{lo..hi}, a = rand(n)
        a = self.rand(rng, rng.randint(self.lo, self.hi))
        return a, None, out(a)

    def set_op(self, rng, out):  # a and b draw from a pool of tot//2 ids, so they overlap
        tot = rng.randint(self.lo - 1, self.hi - 1)  # -1: the argument separator
        n1 = rng.randint(0, tot)  # a may be empty (then union = b, intersect = empty)
        pool = rng.sample(self.V, min(tot // 2, len(self.V)))  # clamped for a tiny n_task_tokens
        a, b = rng.choices(pool, k=n1), rng.choices(pool, k=tot - n1)
        return a, b, out(dict.fromkeys(a), dict.fromkeys(b))  # ordered sets: first occurrence

    def set(self, rng, dedup=False):  # k~U{1..n} types in runs [9, 9, 9, 7, 7, 5], shuffled
        n = rng.randint(self.lo, self.hi)  # [9, 7, 9, 5, 7, 9] -> [9, 7, 5]; dedup keeps the runs:
        a = self.runs(rng, n, self.rand(rng, rng.randint(1, n)))  # [5, 9, 9, 7, 9] -> [5, 9, 7, 9]
        if dedup:
            return a, None, [t for i, t in enumerate(a) if i == 0 or a[i - 1] != t]
        rng.shuffle(a)
        return a, None, list(dict.fromkeys(a))

    def longest_word(self, rng):  # [5, 9, D, 7, 8, D, 4, 3] -> [5, 9]: the first of the longest
        W = rng.randint(1, self.hi // 2)  # words, joined by D = <extra_id_1>
        m = rng.randint(max(self.lo - (W - 1), W), self.hi - (W - 1))  # non-divider tokens
        lens, toks = self.partition(rng, m, W), self.rand(rng, m)  # one draw: iid all the same
        words = [toks[e - n:e] for n, e in zip(lens, itertools.accumulate(lens))]
        return [x for w in words for x in (self.div, *w)][1:], None, max(words, key=len)

    def count(self, rng):  # [5, 9, 5, 7], b=[5] -> the tokens of "2"
        s, q = rng.randint(self.lo - 2, self.hi - 2), rng.choice(self.V)  # room for sep and query
        m = rng.randint(0, s)  # planted copies: the count is near uniform over 0..s, not ~0
        a = [q] * m + self.rand(rng, s - m)
        rng.shuffle(a)
        return a, [q], self.number(a.count(q))

    def search(self, rng):  # [5, 9, 7, 3], b=[9, 7] -> yes, b=[7, 9] -> no (decided on the tokens)
        a, b = self.query(rng, p_neg=0.5)
        return a, b, self.yes if _index(a, b) >= 0 else self.no

    def delete(self, rng):  # [5, 9, 7, 9, 7], b=[9, 7] -> [5, 9, 7]: the first occurrence
        a, b = self.query(rng, p_neg=0.25)
        i = _index(a, b)
        return a, b, a if i < 0 else a[:i] + a[i + len(b):]

    def sort(self, rng):  # by last index in b=[7, 5, 9, 5]: [5, 9, 7, 5] -> [7, 9, 5, 5]
        olen = rng.randint(min(self.lo // 2, (self.hi - 1) // 2), (self.hi - 1) // 2)
        b = self.rand(rng, olen)  # the order; it may repeat tokens
        a = self.runs(rng, rng.randint(olen, self.hi - 1 - olen), rng.choices(b, k=olen))
        rng.shuffle(a)
        return a, b, sorted(a, key={t: i for i, t in enumerate(b)}.__getitem__)  # last index wins

    def replace(self, rng):  # [5, 9, 5, 7], b=[5, 8] (key 5 -> value 8) -> [8, 9, 8, 7]
        a = self.rand(rng, rng.randint(self.lo - 3, self.hi - 3))  # room for sep, key, value
        k, v = rng.choice(list(dict.fromkeys(a))), rng.choice(self.V)  # v may be k
        return a, [k, v], [v if t == k else t for t in a]

    def simple(self, name, prefix, rng):  # resampled until lo <= len(body) <= hi, as the original
        for _ in range(100_000):  # bounded: an impossible length range fails instead of hanging
            a, b, out = SIMPLE[name][0](self, rng)
            body = a if b is None else a + [self.sep] + b
            if self.lo <= len(body) <= self.hi:
                return prefix + [self.name_sep] + body, out or [self.empty]
        raise RuntimeError(f"{name}: no body of length {self.lo}..{self.hi} in 100000 tries")

    def lime(self, rng, mode):
        """rule [A + B A * -], subst [A : [ x y ] B : [ + z ]] -> result [x y + + z x y * -];
        induct infers the rule, deduct the result, abduct the substitution from the other two."""
        col, sep, upp, lbr, low, mth, rbr = (self.vocab.sentinel(99 - i) for i in range(7))
        for _ in range(1000):  # rejection sampling, as the original
            al = rng.sample(self.V, 68)  # 68 distinct ids (is_original_vocab_division)
            upper, lower, math = al[:24], al[24:48], al[48:]
            k, plen = rng.randint(3, 5), rng.randrange(5, 20)  # variables, math symbols in the rule
            chars = rng.choices(upper[:k], k=2 * k)  # some of the k may go unused
            variables = list(dict.fromkeys(chars))
            rule = chars + rng.choices(math, k=plen)
            rng.shuffle(rule)
            sub = {v: rng.choices(lower + math, k=rng.randint(2, 8)) for v in variables}
            subst = [x for v in variables for x in (v, col, lbr, *sub[v], rbr)]  # no commas
            result = [x for t in rule for x in sub.get(t, (t,))]
            head = [upp, *variables, low, *lower, mth, *math, sep]  # only the variables used
            src, tgt = {"induct": (head + result + [sep] + subst, rule),
                        "deduct": (head + rule + [sep] + subst, result),
                        "abduct": (head + rule + [sep] + result, subst)}[mode]
            commas = len(variables) - 1  # the original measured lengths before removing them
            if (len(src) + commas * (mode != "abduct") <= self.hi
                    and len(tgt) + commas * (mode == "abduct") <= self.hi):
                return src, tgt
        raise config.UserError(f"--max_len={self.hi} is too short for LIME ({mode}): no example in "
                               "1000 tries (inputs: 74-200 ids); use max_len >= 128 (paper: 220)")

# name: (generator, the task prefix the original wrote, that prefix in T5's ids). The unary tasks
# on a=[5, 9, 7]: identity [5, 9, 7], duplicate [5, 5, 9, 9, 7, 7], reverse [7, 9, 5], first and
# last token [5] and [7], length the tokens of "3"; the set operations on a=[5, 9, 5, 7] and
# b=[7, 9, 8]: union [5, 9, 7, 8], intersect [9, 7], set1_minus_set2 [5], set2_minus_set1 [8].
SIMPLE = {
    "identity": (lambda g, r: g.unary(r, lambda a: a), "copy", [2405]),
    "set": (Gen.set, "set", [356]), "delete": (Gen.delete, "delete", [9268]),
    "sort": (Gen.sort, "sort", [1843]),
    "union": (lambda g, r: g.set_op(r, lambda a, b: list({**a, **b})), "union", [7021]),
    "replace": (Gen.replace, "replace", [3601]),
    "duplicate": (lambda g, r: g.unary(r, lambda a: [t for t in a for _ in (0, 1)]), "duplicate",
                  [19197]),
    "intersect": (lambda g, r: g.set_op(r, lambda a, b: [t for t in a if t in b]), "intersect",
                  [27806]),
    "reverse": (lambda g, r: g.unary(r, lambda a: a[::-1]), "reverse", [7211]),
    "deduplicate": (lambda g, r: g.set(r, dedup=True), "deduplicate", [20, 26, 413, 26221]),
    "search": (Gen.search, "search", [960]),
    "longest_word": (Gen.longest_word, "longest_word", [14783, 834, 6051]),
    "length": (lambda g, r: g.unary(r, lambda a: g.number(len(a))), "length", [2475]),
    "count": (Gen.count, "count", [3476]),
    "first_token": (lambda g, r: g.unary(r, lambda a: a[:1]), "first_char", [166, 834, 4059]),
    "last_token": (lambda g, r: g.unary(r, lambda a: a[-1:]), "last_char", [336, 834, 4059]),
    "set1_minus_set2": (lambda g, r: g.set_op(r, lambda a, b: [t for t in a if t not in b]),
                        "set_1_minus_2", [356, 834, 536, 834, 14078, 834, 357]),
    "set2_minus_set1": (lambda g, r: g.set_op(r, lambda a, b: [t for t in b if t not in a]),
                        "set_2_minus_1", [356, 834, 357, 834, 14078, 834, 536])}
TASKS = list(SIMPLE) + ["lime", "lime_induct", "lime_deduct", "lime_abduct", "nonsense_summary",
                        "nesting_language", "natural"]

# ------------------------------------------------------------------------- nonsense summarisation
def _kw(tid, base):  # Appendix A.3: a keyword token is "__" + task id + "__" + base + "__"
    return f"__{tid}__{base}__"

_L = "abcdefghijklmnopqrstuvwxyz"  # A.1: word i spells i in base 26, least significant first
NONSENSE_WORDS = [_L[i % 26] + _L[i // 26 % 26] + _L[i // 676 % 26] for i in range(5000)]
_KEY10, _J5 = [f"keyword_{i}" for i in range(10)], [f"join_{i}" for i in range(5)]
_CLS9, _NUM100 = [f"class_{i // 3}_kw_{i % 3}" for i in range(9)], [str(i) for i in range(100)]

def _pick(lines, m, rng):  # A.4's pick_lines(m): m distinct lines, ascending
    return sorted(rng.sample(range(len(lines)), m))

def _free(w, keep_last=1):  # A.4's replaceable(line): positions <= L-1-keep_last without '_'
    return [p for p in range(len(w) - keep_last) if "_" not in w[p]]  # (keywords stay)

class Transform:
    """A transformation: modify(lines, rng) edits token lists in place, output() gives summaries."""

    def __init__(self, tid, name, bases):
        self.tid, self.name, self.keywords = tid, name, [_kw(tid, b) for b in bases]
        self.kwset = set(self.keywords)  # the task id in each keeps the tasks' keywords disjoint

    def find(self, lines):  # A.4's find(task): (line index, its keywords of this task), in order
        return [(i, [w for w in line if w in self.kwset])
                for i, line in enumerate(lines) if not self.kwset.isdisjoint(line)]

    def modify(self, lines, rng):
        t, K = self.tid, self.keywords
        if t in ("d3", "d10", "d14", "d21", "d11", "d18", "d4", "d5", "d12", "d13"):
            m = (3 if t in ("d4", "d5") else 2 * rng.randint(1, 2) + 1 if t == "d12"  # lines
                 else rng.randint(2, 5) if t == "d13" else 1)
            for i in _pick(lines, m, rng):  # a keyword each, with replacement; d18: src_i only
                lines[i][rng.choice(_free(lines[i]))] = rng.choice(K[:20] if t == "d18" else K)
        elif t in ("d6", "d16", "d19"):  # distinct keywords, the i-th picked line gets the i-th
            m = rng.randint(1, 4) if t == "d16" else 3
            for i, kw in zip(_pick(lines, m, rng), rng.sample(K, m)):  # d19: p <= L-3
                lines[i][rng.choice(_free(lines[i], 2 if t == "d19" else 1))] = kw
        elif t == "d7":  # quotes around w[b:e]; b >= 1 if w[0] is a keyword (a bullet stays first)
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

    def output(self, lines, rng):
        t, found, J, K = self.tid, self.find(lines), " ".join, self.keywords
        if t in ("d3", "d4", "d5"):  # the marked lines as they stand, in document order
            out = [J(lines[i]) for i, _ in found]
            if t == "d5":  # shuffled as the summary is built: not a function of the input
                rng.shuffle(out)
            return out
        if t == "d6":  # sorted by keyword (string order = index order: single digits)
            return [J(lines[i]) for i, kws in sorted(found, key=lambda f: f[1][0])]
        if t == "d12":  # m is odd: never a tie
            top = Counter(k for _, ks in found for k in ks).most_common(1)[0][0]
            return [f"The keyword {K.index(top) + 1} occurred more number of times ."]
        if t == "d13":  # 3 headers (no period), each followed by its class's lines in order
            return [s for cl in range(3) for s in [f"section {_kw(t, f'class_{cl}')}"] + [
                J(lines[i]) for i, ks in found if K.index(ks[0]) // 3 == cl]]
        if t == "d16":  # the maximum, as a bare decimal
            return [f"The largest number is {max(int(ks[0].split('__')[2]) for _, ks in found)} ."]
        if t == "d19":  # each joiner + its clause up to (not including) the line's last token
            return ["The combined sentence is " + "".join(ks[0] + " " + J(
                lines[i][lines[i].index(ks[0]) + 1:-1]) + " " for i, ks in found) + "."]
        i, kws = found[0]  # the other tasks read their only marked line
        w, kw = lines[i], kws[0]
        if t == "d7":  # the tokens strictly between the quotes; " ." added unless they end with it
            s = J(w[w.index(K[0]) + 1:w.index(K[1])])
            return [s if s.endswith(".") else s + " ."]
        if t == "d8":
            return [J(w[1:])]  # the bullet is always first: d7 never quotes in front of it
        if t == "d10":  # keyword_0..4 positive, 5..9 negative
            return ["the keyword was " + ("positive" if K.index(kw) < 5 else "negative") + " ."]
        if t == "d11":  # the keyword replaced by its class token __d11__class_c__
            return [J(_kw(t, f"class_{K.index(kw) // 3}") if x == kw else x for x in w)]
        if t == "d14":  # the number is read from the token's digits
            return ["the number was above or equal to threshold ." if int(kw.split("__")[2]) >= 50
                    else "the number was below threshold ."]
        if t == "d18":  # paraphrase index j drawn as the summary is built
            tgt = _kw(t, f"target_{int(kw.split('_')[-3])}_{rng.randrange(3)}")
            return [J(tgt if x == kw else x for x in w)]
        if t == "d20":  # p < q: A = w[:q] + '.', B = w[:p] + w[q:L-1] + '.'
            p, q = sorted(w.index(k) for k in kws)
            return [J(w[:q] + ["."]), J(w[:p] + w[q:-1] + ["."])]
        return [J(w[:w.index(kw)] + ["."])]  # d21: the tokens before the keyword

TRANSFORMS = [Transform(*spec) for spec in [  # (id, name, keyword bases): A.5's 16, in order
    ("d3", "CopyKeywordOneSentence", _KEY10), ("d4", "CopyKeywordMultipleSentences", _KEY10),
    ("d5", "CopyKeywordMultipleSentencesShuffled", _KEY10),
    ("d6", "CopyKeywordMultipleSentencesSorted", _KEY10),
    ("d7", "CopyQuoted", ["begin_quote", "end_quote"]), ("d8", "CopyBulleted", ["bullet"]),
    ("d10", "ClassifyKeyword", _KEY10), ("d11", "ReplaceClassKeyword", _CLS9),
    ("d12", "MajorityKeyword", ["keyword_1", "keyword_2"]), ("d13", "TopicSegregation", _CLS9),
    ("d14", "ThresholdNumber", _NUM100), ("d16", "LargestNumber", _NUM100),
    ("d18", "ParaphraseWords", [f"src_{i}" for i in range(20)]
     + [f"target_{i}_{j}" for i in range(20) for j in range(3)]),
    ("d19", "JoinClauses", _J5), ("d20", "BreakClauses", _J5), ("d21", "TruncateSentence", _KEY10)]]
# Every word a task can emit, in a fixed order (a word's id without a tokenizer); the simple
# tasks' words first, so that they stay collision-free even in small vocabularies.
WORDS = list(dict.fromkeys(
    [p for _, p, _ in SIMPLE.values()] + ["yes", "no"] + _NUM100 + ["."]
    + ("the keyword was positive negative occurred more number of times section above or equal to "
       "threshold below largest is combined sentence").split()
    + [k for t in TRANSFORMS for k in t.keywords]
    + [_kw(t, f"class_{c}") for t in ("d11", "d13") for c in range(3)] + NONSENSE_WORDS))
_WORD_INDEX = {w: i for i, w in enumerate(WORDS)}

def nonsense_document(rng):
    """One document (A.2, A.5): 7..13 lines of 5..15 words + ".", an ordered triple of distinct
    transformations applied in turn, then their outputs: (article lines, summary lines)."""
    n_lines = rng.randint(7, 13)
    lines = [rng.choices(NONSENSE_WORDS, k=rng.randint(5, 15)) + ["."] for _ in range(n_lines)]
    triple = rng.sample(TRANSFORMS, 3)  # all 3360 ordered triples equally likely
    for t in triple:
        t.modify(lines, rng)  # order matters: insertions shift positions, keywords block edits
    summary = [s for t in triple for s in t.output(lines, rng)]  # read after all modifications
    return [" ".join(w) for w in lines], summary

# ------------------------------------------------------------------------- span corruption, nesting
def _noise(n, noise_density=0.15, mean_span=3):  # (noise tokens, noise spans) of n tokens
    n_noise = min(max(round(n * noise_density), 1), n - 1)  # round() is half-to-even, as np.round
    return n_noise, max(round(n_noise / mean_span), 1)

def span_corrupt(tokens, vocab, rng):
    """T5's span_corruption without EOS: kept and noise spans alternate, kept first; [a b c d e f g]
    with noise [d e] -> inputs [a b c <extra_id_0> f g], targets [<extra_id_0> d e]."""
    n_noise, n_spans = _noise(n := len(tokens))
    def segment(n_items):  # T5's _random_segmentation: n_spans parts, cut uniformly at random
        cuts = [0] + sorted(rng.sample(range(1, n_items), n_spans - 1)) + [n_items]
        return [b - a for a, b in zip(cuts, cuts[1:])]
    noise, keep = segment(n_noise), segment(n - n_noise)
    src, tgt, pos = [], [], 0
    for k in range(n_spans):  # kept span k, then noise span k (<extra_id_k> in both sequences)
        src += tokens[pos:pos + keep[k]] + [vocab.sentinel(k)]
        tgt += [vocab.sentinel(k)] + tokens[pos + keep[k]:pos + keep[k] + noise[k]]
        pos += keep[k] + noise[k]
    return src, tgt

def span_tokens_length(inputs_length):
    """T5's random_spans_helper: the raw length whose corrupted input plus EOS fits (512 -> 568);
    the noise is clamped as span_corrupt clamps it (T5 does not, which matters below 10 tokens)."""
    def inputs_len(t):  # kept tokens + a sentinel per span + EOS
        n_noise, n_spans = _noise(t)
        return t - n_noise + n_spans + 1
    return next(t for t in itertools.count(inputs_length) if inputs_len(t) > inputs_length) - 1

# Weights of sentence lengths 0..60: Ri & Tsuruoka's Wikipedia fit (empirical_distribution_sampler)
_LEN_CUM = list(itertools.accumulate([0] * 6 + [
    303, 303, 342, 308, 275, 310, 337, 356, 340, 309, 321, 358, 319, 331, 343, 310, 310, 350, 284,
    284, 307, 252, 246, 255, 209, 207, 177, 168, 165, 128, 149, 133, 109, 123, 102, 99, 81, 81, 73,
    60, 61, 44, 43, 43, 52, 39, 26, 30, 29, 24, 34, 18, 8, 17, 15]))

@lru_cache(maxsize=8)
def _zipf_cum(n_types):
    return list(itertools.accumulate(n_types // i for i in range(1, n_types + 1)))  # ∝ floor(V/i)

def nesting_sentence(rng, ids):
    """A sentence of Ri & Tsuruoka's nesting-dependency language: Zipf types [4, 0, 4] give pairs
    (4 4)(0 0)(4 4), nested by a stack (open w.p. 0.4 or if empty, else close): (4 (0 0) (4 4) 4)"""
    n_types = len(ids) // 2  # T5 layout: 15998 types over 31997 ids
    L = bisect.bisect(_LEN_CUM, rng.random() * _LEN_CUM[-1])  # the empirical lengths, 6..60
    half = max(L // 2 + (rng.random() < 0.5), 1)  # floor(L/2) or floor(L/2)+1 types, 50/50
    types = rng.choices(range(n_types), cum_weights=_zipf_cum(n_types), k=half)
    pairs, out, stack = [(ids[2 * t], ids[2 * t + 1]) for t in types], [], []
    while pairs:
        if not stack or rng.random() < 0.4:  # open the next head, or close the innermost
            h, d = pairs.pop()
            out.append(h)
            stack.append(d)
        else:
            out.append(stack.pop())
    return out + stack[::-1]  # close everything still open

def natural_text(path, g, n_tokens):
    """Span corruption of n_tokens windows of the file at path (documents between blank lines) that
    start at a uniformly random character; documents are tokenized when first drawn."""
    with open(path, encoding="utf-8") as f:  # a missing file: FileNotFoundError, one line
        docs = [d.strip() for d in f.read().split("\n\n") if d.strip()]
    cum = list(itertools.accumulate(len(d) for d in docs))
    tokens = lru_cache(None)(lambda d: array("i", g.tok.encode(docs[d])))  # ~4 bytes per token
    def window(rng):
        d = bisect.bisect_right(cum, rng.randrange(cum[-1]))
        start = rng.randint(0, max(0, len(tokens(d)) - n_tokens))
        out = list(tokens(d)[start:start + n_tokens])
        for k in range(1, len(docs) + 1):  # following documents, no separator, as T5 packs
            if len(out) >= n_tokens:
                break
            out += tokens((d + k) % len(docs))[:n_tokens - len(out)]
        return span_corrupt(out, g.vocab, rng)
    return window

# ------------------------------------------------------------------------- tasks, streams, batches
class Task:
    """A named generator: example(rng, split) -> (source ids, target ids), EOS appended to both, as
    the original did at load time; only `natural` reads another file for validation. A mixture
    'a+b' draws one of its parts per example, with its rng, at equal rates (seqio's default)."""

    def __init__(self, name, fn=None, fn_validation=None, parts=()):
        self.name, self.parts = name, parts
        self.fns = {"train": fn, "validation": fn_validation or fn}

    def example(self, rng, split="train"):
        if self.parts:
            return rng.choice(self.parts).example(rng, split)
        src, tgt = self.fns[split](rng)
        return src + [EOS], tgt + [EOS]

def get_task(name, vocab, *, tokenizer=None, data_dir=None, min_len=10, max_len=220,
             n_task_tokens=None):
    """A task or an 'a+b+c' mixture. min_len/max_len bound the simple tasks' body; max_len also
    bounds LIME's input and target (as the original's 220) and is the corrupted input length, EOS
    included, of nesting_language and natural. Nonsense summaries are not limited."""
    names = [s.strip() for s in name.split("+")]
    if unknown := [s for s in names if s not in TASKS]:
        raise config.UserError(f"--task={name}: unknown {unknown}; choose from {TASKS} or 'a+b'")
    if not 4 <= min_len <= max_len:
        raise config.UserError(f"--min_len={min_len} --max_len={max_len}: need 4 <= min <= max")
    g = Gen(vocab, tokenizer, min_len, max_len, n_task_tokens)  # shared by a mixture's parts
    tasks = [_build(s, g, data_dir) for s in names]
    return tasks[0] if len(tasks) == 1 else Task(name, parts=tasks)

def _build(name, g, data_dir):
    if name in SIMPLE:  # the prefix as the original spelled it, encoded once
        prefix = SIMPLE[name][2] if g.t5 else g.text(SIMPLE[name][1])
        return Task(name, lambda rng: g.simple(name, prefix, rng))
    if name.startswith("lime"):
        if len(g.V) < 68:
            raise config.UserError(f"--n_task_tokens={len(g.V)}: LIME draws 68 distinct ids")
        if name == "lime":
            return Task(name, parts=[_build("lime_" + m, g, data_dir) for m in LIME_MODES])
        return Task(name, lambda rng: g.lime(rng, name[5:]))  # no task-name prefix
    if name == "nonsense_summary":  # " ".join(lines).lower() of article and summary (no tags, A.7)
        return Task(name, lambda rng: [g.text(" ".join(x).lower()) for x in nonsense_document(rng)])
    n_tokens = span_tokens_length(g.hi)  # the raw chunk whose corrupted input fits max_len
    if _noise(n_tokens)[1] > g.vocab.num_sentinels:
        raise config.UserError(f"--max_len={g.hi}: span corruption needs more than 100 sentinels")
    if name == "nesting_language":
        ids = [i for i in g.V if i != g.vocab.unk_id]  # our choice: unk is not a nesting symbol
        if len(ids) < 2:
            raise config.UserError("--task=nesting_language needs --n_task_tokens >= 3")
        def nesting(rng):  # sentences from a random offset, as T5's chunks
            first = nesting_sentence(rng, ids)
            toks = first[rng.randrange(len(first)):]
            while len(toks) < n_tokens:
                toks += nesting_sentence(rng, ids)
            return span_corrupt(toks[:n_tokens], g.vocab, rng)
        return Task(name, nesting)
    if data_dir is None or g.tok is None:  # name == "natural"
        raise config.UserError("--task=natural needs --tokenizer and --data_dir with natural_text/")
    return Task(name, *(natural_text(os.path.join(data_dir, "natural_text", f"{s}.txt"), g,
                                     n_tokens) for s in ("train", "validation")))

class TaskStream:
    """Example i of a split comes from random.Random(f"{split}/{seed}/{i}") (str seeds are hashed
    with sha512: stable across processes), so batch size and restarts do not change the data."""

    def __init__(self, task, seed, split="train", start=0):
        self.task, self.seed, self.split, self.position = task, int(seed), split, int(start)

    def next_examples(self, n):
        out = [self.task.example(random.Random(f"{self.split}/{self.seed}/{i}"), self.split)
               for i in range(self.position, self.position + n)]
        self.position += n
        return out

def collate(examples, max_src_len, max_tgt_len):
    """Pad (id 0) to the longest sequence, cutting longer ones as seqio's trim does (the EOS is
    lost): ({"input_ids", "attention_mask", "labels" (-100 on padding)}, the number cut)."""
    n_cut = sum(len(s) > max_src_len or len(t) > max_tgt_len for s, t in examples)
    S = min(max_src_len, max(len(s) for s, _ in examples))
    T = min(max_tgt_len, max(len(t) for _, t in examples))
    src, tgt = [s[:S] for s, _ in examples], [t[:T] for _, t in examples]
    return {"input_ids": torch.tensor([s + [0] * (S - len(s)) for s in src]),  # lists, then
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (S - len(s)) for s in src]),
            "labels": torch.tensor([t + [-100] * (T - len(t)) for t in tgt])}, n_cut  # a tensor

@dataclass
class TasksConfig:
    task: str = "set"                # a name in TASKS or a mixture "a+b+c"
    n: int = 3                       # examples to print
    vocab_size: int = T5_SIZE        # ids without a tokenizer (32100: T5's ids for names, yes/no)
    tokenizer: str = ""              # a tokenizer file (tokenizer.py): its size then decides
    data_dir: str = config.DATA_DIR  # holds natural_text/ for the task natural

def main(argv):
    cfg = config.parse(TasksConfig, argv, doc=__doc__)
    config.check_range("vocab_size", cfg.vocab_size, 200)
    tok = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    task = get_task(cfg.task, tok or Vocab(cfg.vocab_size), tokenizer=tok, data_dir=cfg.data_dir)
    for src, tgt in TaskStream(task, 0).next_examples(cfg.n):
        print(f"source ({len(src)} ids): {src}\ntarget ({len(tgt)} ids): {tgt}")
        print(f"as text: {tok.decode(src)!r} -> {tok.decode(tgt)!r}\n" if tok else "")

if __name__ == "__main__":
    config.main(main)
