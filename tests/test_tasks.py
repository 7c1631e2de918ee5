"""Tests for tasks.py: every task checked against its definition (the paper's Section 3,
Appendix A) on many seeded examples, streams, batches and the command line.
Run: python -m pytest -q tests/test_tasks.py
"""
import os
import random
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import config  # noqa: E402
import tasks as T  # noqa: E402
from tokenizer import Vocab  # noqa: E402

V = Vocab(32100)  # paper scale: special ids equal T5's
S0, S1, S2, S3 = (V.sentinel(k) for k in range(4))
CONTENT = range(2, 32000)  # V = {2..31999}
N = 300  # seeded examples per check
DIGITS = {T.word_id(str(d), V): str(d) for d in range(10)}


class CharTok(Vocab):
    """A character-level tokenizer: printable ASCII ch -> 3 + ord(ch) - 32, others -> unk."""

    def __init__(self):
        super().__init__(300)

    def encode(self, text):
        return [3 + ord(ch) - 32 if 32 <= ord(ch) < 127 else self.unk_id for ch in text]

    def decode(self, ids):
        return "".join(chr(i - 3 + 32) for i in ids if 3 <= i < 98)


def unspan(src, tgt, is_sentinel):
    """Each sentinel of a span-corrupted input filled with its span: (original, spans)."""
    spans, cur = {}, None
    for t in tgt:
        if is_sentinel(t):
            cur = spans.setdefault(t, [])
        else:
            cur.append(t)
    return [y for t in src for y in spans.get(t, [t])], spans


def examples(name, n=N, vocab=V, **kw):
    task = T.get_task(name, vocab, **kw)
    return [task.example(random.Random(i)) for i in range(n)]


def parts(src, tgt):
    """A simple-task example as (a, b or None, target without EOS), its layout checked."""
    assert src[-1] == 1 and tgt[-1] == 1 and src.count(S0) == 1
    body = src[src.index(S0) + 1:-1]
    if S2 in body:
        i = body.index(S2)
        return body[:i], body[i + 1:], tgt[:-1]
    return body, None, tgt[:-1]


def number(ids):
    return int("".join(DIGITS[i] for i in ids))


def test_t5_prefixes_and_special_ids():
    for name, (_, _, t5_ids) in T.SIMPLE.items():
        src, _ = examples(name, 1)[0]
        assert src[:src.index(S0)] == t5_ids, name
    assert T.SIMPLE["identity"][1:] == ("copy", [2405])  # the original's name, T5's "▁copy"
    assert (S0, S1, S2, S3) == (32099, 32098, 32097, 32096)
    assert {tuple(t) for _, t in examples("search", 100)} == {(4273, 1), (150, 1)}  # yes / no


def test_bodies_in_range_and_no_special_content():
    for lo, hi in [(10, 220), (20, 40), (28, 28)]:
        for name in T.SIMPLE:
            for src, tgt in examples(name, 60, min_len=lo, max_len=hi):
                a, b, out = parts(src, tgt)
                body = a if b is None else a + [S2] + b
                assert lo <= len(body) <= hi, (name, len(body))
                allowed = {S1} if name == "longest_word" else set()
                assert all(t in CONTENT or t in allowed for t in a + (b or [])), name
                assert all(t in CONTENT or t in (S3,) for t in out), name


def test_set_deduplicate_and_unary_tasks():
    for src, tgt in examples("set"):
        a, _, out = parts(src, tgt)
        assert out == list(dict.fromkeys(a))  # distinct tokens, first-occurrence order
    for src, tgt in examples("deduplicate"):
        a, _, out = parts(src, tgt)
        assert out == [t for i, t in enumerate(a) if i == 0 or a[i - 1] != t]
    checks = {"identity": lambda a: a, "reverse": lambda a: a[::-1], "first_token": lambda a: a[:1],
              "last_token": lambda a: a[-1:], "duplicate": lambda a: [x for t in a for x in (t, t)]}
    for name, f in checks.items():
        for src, tgt in examples(name, 50):
            a, _, out = parts(src, tgt)
            assert out == f(a), name
    for src, tgt in examples("longest_word"):
        a, _, out = parts(src, tgt)
        words, cur = [], []
        for t in a + [S1]:
            if t == S1:
                words.append(cur)
                cur = []
            else:
                cur.append(t)
        longest = max(len(w) for w in words)
        assert all(words) and out == next(w for w in words if len(w) == longest)  # the first


def test_sort_is_permutation_ordered_by_last_index():
    for src, tgt in examples("sort"):
        a, b, out = parts(src, tgt)
        key = {t: i for i, t in enumerate(b)}
        assert sorted(out) == sorted(a) and set(a) <= set(b)
        assert [key[t] for t in out] == sorted(key[t] for t in a)


def test_set_operations_agree_with_python_sets():
    ops = {"union": lambda x, y: x | y, "intersect": lambda x, y: x & y,
           "set1_minus_set2": lambda x, y: x - y, "set2_minus_set1": lambda x, y: y - x}
    empty = 0
    for name, op in ops.items():
        for src, tgt in examples(name):
            a, b, out = parts(src, tgt)
            want = op(set(a), set(b))
            if not want:
                assert out == [S3]
                empty += 1
                continue
            assert len(out) == len(set(out)) and set(out) == want
            first = list(dict.fromkeys(b if name == "set2_minus_set1" else a + b))  # our order
            assert out == [t for t in first if t in want]
    assert empty > 0  # the empty-output token is exercised


def test_count_and_length_decode_to_true_numbers():
    for src, tgt in examples("count"):
        a, b, out = parts(src, tgt)
        assert len(b) == 1 and number(out) == a.count(b[0])
    for src, tgt in examples("length"):
        a, _, out = parts(src, tgt)
        assert number(out) == len(a)
    tok = CharTok()  # with a tokenizer: str(n) encoded, the task name as the original spelled it
    for src, tgt in examples("count", 100, vocab=tok, tokenizer=tok):
        body = src[src.index(tok.sentinel(0)) + 1:-1]
        i = body.index(tok.sentinel(2))
        assert tok.decode(tgt) == str(body[:i].count(body[i + 1]))
    src, _ = examples("identity", 1, vocab=tok, tokenizer=tok)[0]
    assert tok.decode(src[:src.index(tok.sentinel(0))]) == "copy"


def test_search_and_delete():
    def occurs_at(a, b):
        return next((i for i in range(len(a) - len(b) + 1) if a[i:i + len(b)] == b), -1)
    answers = []
    for src, tgt in examples("search", 600):
        a, b, out = parts(src, tgt)
        assert out == ([4273] if occurs_at(a, b) >= 0 else [150])
        answers.append(out[0])
    assert 0.35 < answers.count(4273) / len(answers) < 0.65
    for src, tgt in examples("delete"):
        a, b, out = parts(src, tgt)
        i = occurs_at(a, b)
        assert out == (a if i < 0 else a[:i] + a[i + len(b):]) or (out == [S3] and a == b)


def test_replace_and_n_task_tokens():
    for src, tgt in examples("replace"):
        a, (k, v), out = parts(src, tgt)
        assert k in a and out == [v if t == k else t for t in a]
    for src, tgt in examples("identity", 50, n_task_tokens=2):  # the first 2 content ids only
        assert set(parts(src, tgt)[0]) <= {2, 3}
    with pytest.raises(config.UserError, match="--n_task_tokens=10: LIME draws 68"):
        T.get_task("lime", V, n_task_tokens=10)
    with pytest.raises(config.UserError, match="--n_task_tokens=31999 is not in 1..31998"):
        T.get_task("set", V, n_task_tokens=31999)


def parse_lime(src):
    col, sep, upp, lbr, low, mth, rbr = (V.sentinel(99 - i) for i in range(7))
    assert src[0] == upp and src[-1] == 1
    i_low, i_mth = src.index(low), src.index(mth)
    variables, lower, math = src[1:i_low], src[i_low + 1:i_mth], src[i_mth + 1:i_mth + 21]
    assert len(lower) == 24 and src[i_mth + 21] == sep
    assert len(set(variables + lower + math)) == len(variables) + 44
    rest = src[i_mth + 22:-1]
    j = rest.index(sep)
    return variables, rest[:j], rest[j + 1:], (col, lbr, rbr)


def subst_of(x, col, lbr, rbr):
    d, i = {}, 0
    while i < len(x):
        assert x[i + 1] == col and x[i + 2] == lbr
        j = x.index(rbr, i)
        d[x[i]] = x[i + 3:j]
        i = j + 1
    return d


def apply(rule, d):
    return [y for t in rule for y in d.get(t, [t])]


def test_lime_modes_are_consistent():
    for mode in T.LIME_MODES:
        for src, tgt in examples("lime_" + mode, 150):
            variables, x, y, syms = parse_lime(src)
            out = tgt[:-1]
            assert len(src) - 1 <= 220 and len(out) <= 220
            if mode == "deduct":  # target = rule with the substitution applied
                rule, d = x, subst_of(y, *syms)
                assert apply(rule, d) == out
            elif mode == "induct":  # the target rule rewrites to the given result
                rule, d = out, subst_of(y, *syms)
                assert apply(rule, d) == x
            else:  # abduct: the target substitution rewrites the rule to the result
                rule, d = x, subst_of(out, *syms)
                assert apply(rule, d) == y
            assert list(d) == variables and 1 <= len(variables) <= 5  # k~U{3..5} drawn 2k times
            n_vars = sum(t in d for t in rule)
            assert n_vars in (6, 8, 10) and 5 <= len(rule) - n_vars <= 19
            assert all(2 <= len(s) <= 8 for s in d.values())
            drawn = [t for t in variables + rule + y + x if t not in syms and t < 32000]
            assert all(t in CONTENT for t in drawn)
            assert all(t in CONTENT for t in src[:-1] if t < 32000)
            assert max(src[:-1] + out) <= V.sentinel(93)
    srcs = [src[0] for src, _ in examples("lime", 30)]  # the mixture carries no task prefix either
    assert all(s == V.sentinel(97) for s in srcs)


def test_lime_too_short_max_len_fails_instead_of_looping():
    task = T.get_task("lime", V, max_len=64)  # the 68-id prefix alone fills ~50 ids: nothing fits
    with pytest.raises(ValueError, match="max_len=64 .* use max_len >= 128"):
        task.example(random.Random(0))
    short = T.get_task("lime_deduct", V, max_len=100)  # tight but possible: every example fits
    pairs = [short.example(random.Random(i)) for i in range(50)]
    assert all(len(s) <= 100 and len(t) <= 100 for s, t in pairs)


def test_mixture_equal_rates_and_names():
    task = T.get_task("identity+reverse", V)
    assert task.name == "identity+reverse"
    assert [t.name for t in task.parts] == ["identity", "reverse"]
    firsts = [task.example(random.Random(i))[0][0] for i in range(2000)]
    assert 0.45 < firsts.count(2405) / 2000 < 0.55  # prefix "copy" vs "reverse"
    with pytest.raises(config.UserError, match=r"--task=set\+nope: unknown \['nope'\]; choose"):
        T.get_task("set+nope", V)
    with pytest.raises(config.UserError, match="--min_len=3"):
        T.get_task("set", V, min_len=3)
    with pytest.raises(config.UserError, match="--max_len=2500: span corruption needs more than"):
        T.get_task("nesting_language", V, max_len=2500)  # > 100 noise spans: checked up front


def test_span_corrupt_reconstructs_original():
    rng = random.Random(0)
    assert T.span_tokens_length(512) == 568 and T.span_tokens_length(256) == 284  # as T5's helper
    for L in range(4, 300):  # the corrupted input plus EOS fills inputs_length without exceeding it
        n_in = len(T.span_corrupt(list(range(3, 3 + T.span_tokens_length(L))), V, rng)[0]) + 1
        assert L - 2 <= n_in <= L
    for n in list(range(2, 40)) + [100, 284, 568]:
        toks = [rng.randrange(3, 1000) for _ in range(n)]
        src, tgt = T.span_corrupt(toks, V, rng)
        noise = min(max(round(n * 0.15), 1), n - 1)
        k = max(round(noise / 3), 1)
        sents = [V.sentinel(i) for i in range(k)]
        assert [t for t in src if t >= 32000] == sents and [t for t in tgt if t >= 32000] == sents
        assert len(tgt) == noise + k and tgt[0] == sents[0]
        orig, spans = unspan(src, tgt, V.is_sentinel)
        assert all(spans.values())  # no empty span
        assert orig == toks


def test_nesting_sentences_are_well_nested():
    ids = list(range(3, 2003))  # 1000 types: head ids[2t], dependent ids[2t+1]
    rng, counts = random.Random(0), [0] * 1000
    for _ in range(500):
        sent, stack = T.nesting_sentence(rng, ids), []
        assert 6 <= len(sent) <= 62 and len(sent) % 2 == 0
        for t in sent:
            if (t - 3) % 2 == 0:
                stack.append(t + 1)
                counts[(t - 3) // 2] += 1
            else:
                assert stack.pop() == t  # each dependent closes the innermost open head
        assert not stack
    assert counts[0] > 2 * counts[5] > 0  # Zipf: type 1 ~ 6x more frequent than type 6
    for src, tgt in examples("nesting_language", 50, max_len=64):
        assert len(src) <= 64 and src[-1] == 1 and tgt[-1] == 1 and tgt[0] == S0


def test_every_task_is_a_function_of_its_seed():
    for name in T.TASKS[:-1]:  # natural is covered below with a file fixture
        task = T.get_task(name, V)
        assert task.example(random.Random(7)) == task.example(random.Random(7)), name
        assert task.example(random.Random(7)) != task.example(random.Random(8)), name


def test_streams_deterministic_and_splits_differ():
    task = T.get_task("set+lime", V)
    whole = T.TaskStream(task, seed=3).next_examples(12)
    s = T.TaskStream(task, seed=3)
    assert s.next_examples(5) + s.next_examples(7) == whole and s.position == 12
    assert T.TaskStream(task, seed=3, start=4).next_examples(8) == whole[4:]
    assert T.TaskStream(task, seed=3).next_examples(12) == whole  # same seed, same examples
    assert T.TaskStream(task, seed=4).next_examples(12) != whole
    val = T.TaskStream(task, seed=3, split="validation").next_examples(12)
    assert all(v != w for v, w in zip(val, whole))
    with pytest.raises(KeyError):
        T.TaskStream(task, 0, split="test").next_examples(1)


def test_collate_pads_and_counts_truncation():
    ex = [([5, 6, 7, 1], [8, 1]), ([5, 1], [8, 9, 10, 11, 1])]
    batch, cut = T.collate(ex, max_src_len=3, max_tgt_len=10)
    assert cut == 1
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 1, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[8, 1, -100, -100, -100], [8, 9, 10, 11, 1]]
    batch, cut = T.collate(ex, 8, 8)
    assert cut == 0 and batch["input_ids"].shape == (2, 4) and batch["labels"].dtype == torch.long


# ------------------------------------------------------------ nonsense summarisation (Appendix A)
D = ["kab tue mod pic rog .", "lud sef nib wac hoe .", "jag vud zeb fic gad .",
     "xob yic duf oca meg .", "bed ruf tob kic nad ."]
TR = {t.tid: t for t in T.TRANSFORMS}


def out(tid, changed, rng=None):
    """The summary of task `tid` on document D with some lines replaced (A.6's examples)."""
    lines = [s.split(" ") for s in D]
    for i, s in changed.items():
        lines[i] = s.split(" ")
    return TR[tid].output(lines, rng or random.Random(0))


def test_nonsense_vocabulary_and_tasks():
    assert len(T.NONSENSE_WORDS) == 5000 and T.NONSENSE_WORDS[:2] == ["aaa", "baa"]
    assert T.NONSENSE_WORDS[26] == "aba" and T.NONSENSE_WORDS[4999] == "hkh"
    assert [t.name for t in T.TRANSFORMS][:2] == ["CopyKeywordOneSentence",
                                                  "CopyKeywordMultipleSentences"]
    assert len(TR) == 16 and len(set(T.WORDS)) == len(T.WORDS)


def test_nonsense_transformations_hand_checked():
    l2 = "jag __d3__keyword_7__ zeb fic gad ."
    assert out("d3", {2: l2}) == [l2]
    d4 = {0: "kab __d4__keyword_2__ mod pic rog .", 2: "jag vud zeb __d4__keyword_2__ gad .",
          3: "__d4__keyword_9__ yic duf oca meg ."}
    assert out("d4", d4) == [d4[0], d4[2], d4[3]]
    d5 = {i: s.replace("d4", "d5") for i, s in d4.items()}
    assert sorted(out("d5", d5)) == sorted(d5.values())
    d6 = {0: "kab tue __d6__keyword_8__ pic rog .", 1: "lud sef nib __d6__keyword_1__ hoe .",
          4: "bed ruf tob kic __d6__keyword_4__ ."}
    assert out("d6", d6) == [d6[1], d6[4], d6[0]]
    q0, q1 = "__d7__begin_quote__", "__d7__end_quote__"
    assert out("d7", {1: f"lud sef {q0} nib wac {q1} hoe ."}) == ["nib wac ."]
    assert out("d7", {1: f"lud sef nib {q0} wac hoe . {q1}"}) == ["wac hoe ."]
    assert out("d8", {3: "__d8__bullet__ xob yic duf oca meg ."}) == ["xob yic duf oca meg ."]
    assert out("d10", {4: "bed ruf __d10__keyword_6__ kic nad ."}) == ["the keyword was negative ."]
    assert (out("d11", {0: "kab tue mod __d11__class_2_kw_1__ rog ."})
            == ["kab tue mod __d11__class_2__ rog ."])
    d12 = {0: "__d12__keyword_1__ tue mod pic rog .", 2: "jag vud zeb __d12__keyword_2__ gad .",
           4: "bed ruf tob kic __d12__keyword_1__ ."}
    assert out("d12", d12) == ["The keyword 1 occurred more number of times ."]
    d13 = {1: "lud __d13__class_2_kw_0__ nib wac hoe .",
           2: "jag vud __d13__class_0_kw_2__ fic gad .",
           4: "bed ruf tob __d13__class_2_kw_1__ nad ."}
    assert out("d13", d13) == ["section __d13__class_0__", d13[2], "section __d13__class_1__",
                               "section __d13__class_2__", d13[1], d13[4]]
    assert (out("d14", {2: "jag vud zeb fic __d14__50__ ."})
            == ["the number was above or equal to threshold ."])
    assert out("d14", {2: "jag vud zeb fic __d14__49__ ."}) == ["the number was below threshold ."]
    assert out("d16", {1: "lud sef __d16__7__ wac hoe .", 3: "xob yic duf __d16__42__ meg ."}) == [
        "The largest number is 42 ."]
    assert out("d18", {1: "__d18__src_3__ sef nib wac hoe ."}, random.Random(1))[0] in [
        f"__d18__target_3_{j}__ sef nib wac hoe ." for j in range(3)]
    d19 = {0: "kab tue __d19__join_4__ pic rog .", 2: "jag vud zeb __d19__join_0__ gad .",
           3: "__d19__join_1__ yic duf oca meg ."}
    assert out("d19", d19) == ["The combined sentence is __d19__join_4__ pic rog __d19__join_0__ "
                               "gad __d19__join_1__ yic duf oca meg ."]
    assert out("d20", {3: "xob __d20__join_0__ duf __d20__join_3__ meg ."}) == [
        "xob __d20__join_0__ duf .", "xob __d20__join_3__ meg ."]
    assert out("d20", {3: "__d20__join_2__ yic duf oca __d20__join_1__ ."}) == [
        "__d20__join_2__ yic duf oca .", "__d20__join_1__ ."]
    assert out("d21", {1: "lud sef nib __d21__keyword_0__ hoe ."}) == ["lud sef nib ."]
    assert out("d21", {1: "__d21__keyword_0__ sef nib wac hoe ."}) == ["."]  # keyword first
    # A.7 composite (d8, d14, d3): d8's copied line carries d14's token.
    final = {0: "kab tue mod pic __d3__keyword_3__ .",
             2: "__d8__bullet__ jag vud __d14__17__ fic gad ."}
    summary = [s for tid in ("d8", "d14", "d3") for s in out(tid, final)]
    assert " ".join(summary) == ("jag vud __d14__17__ fic gad . the number was below threshold . "
                                 "kab tue mod pic __d3__keyword_3__ .")


def test_nonsense_modifications_follow_their_rules():
    rng = random.Random(0)
    for _ in range(40):
        for t in T.TRANSFORMS:
            lines = [rng.choices(T.NONSENSE_WORDS, k=rng.randint(5, 15)) + ["."]
                     for _ in range(rng.randint(7, 13))]
            before = [list(w) for w in lines]
            t.modify(lines, rng)
            found = t.find(lines)
            n_lines = {"d4": {3}, "d5": {3}, "d6": {3}, "d19": {3}, "d12": {3, 5},
                       "d13": {2, 3, 4, 5},
                       "d16": {1, 2, 3, 4}}.get(t.tid, {1})
            assert len(found) in n_lines, t.tid
            for i, kws in found:
                w, old = lines[i], before[i]
                if t.tid == "d7":  # two tokens inserted, nothing replaced
                    assert [x for x in w if x not in kws] == old and len(w) == len(old) + 2
                elif t.tid == "d8":
                    assert w == [kws[0]] + old
                else:  # same length, the last token untouched, only keyword positions changed
                    assert len(w) == len(old) and w[-1] == "."
                    assert len(kws) == (2 if t.tid == "d20" else 1)
                    assert all(w[p] == old[p] for p in range(len(w)) if w[p] not in kws)
                if t.tid == "d19":
                    assert w.index(kws[0]) <= len(w) - 3
            if t.tid in ("d6", "d16", "d19"):
                assert len({k for _, ks in found for k in ks}) == len(found)  # distinct keywords
            assert t.output(lines, rng)


def test_nonsense_documents_and_ids():
    rng = random.Random(0)
    for _ in range(200):
        art, summ = T.nonsense_document(rng)
        assert 7 <= len(art) <= 13 and summ
        tids = {w.split("__")[1] for line in art for w in line.split(" ") if w.startswith("__")}
        assert len(tids) == 3  # three distinct transformations, none overwritten
    inverse = {T.word_id(w, V): w for w in T.WORDS}
    for seed in range(20):  # without a tokenizer: word-level ids of the lowercased texts
        a, s = T.nonsense_document(random.Random(seed))
        src, tgt = T.get_task("nonsense_summary", V).example(random.Random(seed))
        assert " ".join(inverse[i] for i in src[:-1]) == " ".join(a).lower()
        assert " ".join(inverse[i] for i in tgt[:-1]) == " ".join(s).lower()
    tok = CharTok()
    a, s = T.nonsense_document(random.Random(5))
    src, tgt = T.get_task("nonsense_summary", tok, tokenizer=tok).example(random.Random(5))
    assert tok.decode(src) == " ".join(a).lower() and tok.decode(tgt) == " ".join(s).lower()


def test_natural_text_span_corruption(tmp_path):
    tok = CharTok()
    with pytest.raises(ValueError, match="data_dir"):
        T.get_task("natural", tok, tokenizer=tok)
    with pytest.raises(ValueError, match="tokenizer"):
        T.get_task("natural", tok, data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError):
        T.get_task("natural", tok, tokenizer=tok, data_dir=str(tmp_path))
    (tmp_path / "natural_text").mkdir()
    docs = {"train": ["The cat sat on the mat today.",
                      "Dogs bark.\nBirds sing loudly in the morning."],
            "validation": ["Validation text is different from training text entirely."]}
    for split, ds in docs.items():
        (tmp_path / "natural_text" / f"{split}.txt").write_text("\n\n".join(ds) + "\n")
    task = T.get_task("natural", tok, tokenizer=tok, data_dir=str(tmp_path), max_len=20)
    n = T.span_tokens_length(20)
    for split in ("train", "validation"):
        corpus = "".join(d.replace("\n", "") for d in docs[split]) * 2  # windows may run on
        for src, tgt in T.TaskStream(task, 0, split).next_examples(30):
            orig, _ = unspan(src[:-1], tgt[:-1], tok.is_sentinel)
            assert len(orig) == n and len(src) <= 20 and tok.decode(orig) in corpus


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get("DATA_DIR") or os.path.join(ROOT, "..", "shared", "data")


@pytest.mark.skipif(not os.path.isdir(os.path.join(DATA_DIR, "natural_text")),
                    reason="real data not found: set DATA_DIR or place it at ../shared/data")
def test_natural_on_real_corpus():
    tok = CharTok()  # any tokenizer will do: the check is that windows come from the corpus
    task = T.get_task("natural", tok, tokenizer=tok, data_dir=DATA_DIR, max_len=64)
    with open(os.path.join(DATA_DIR, "natural_text", "validation.txt"), encoding="utf-8") as f:
        corpus = tok.decode(tok.encode(f.read().replace("\n", "")))
    for src, tgt in T.TaskStream(task, 0, "validation").next_examples(20):
        orig = tok.decode(unspan(src[:-1], tgt[:-1], tok.is_sentinel)[0])
        assert len(src) <= 64 and orig[:40] in corpus


def test_command_line(capsys):
    with pytest.raises(SystemExit) as e:
        T.main(["-h"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--task='set'" in out and "--n=3" in out
    T.main(["--task=reverse", "--n=2", "--vocab_size=256"])
    out = capsys.readouterr().out
    assert out.count("source (") == 2 and out.count("target (") == 2
    with pytest.raises(config.UserError, match="--task=nope"):
        T.main(["--task=nope"])
    with pytest.raises(config.UserError, match="--vocab_size=100"):
        T.main(["--vocab_size=100"])
