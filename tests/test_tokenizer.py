"""Tests for tokenizer.py: byte-level BPE (round trip, determinism, the efficient trainer against a
naive one, sentinel layout, caching), the T5 unigram reader on a hand-made tokenizer.json, the CLI.
Run: python -m pytest -q tests/test_tokenizer.py"""
import json
import os
import random
import sys
from collections import Counter

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import config  # noqa: E402
import tokenizer as T  # noqa: E402

CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away!",
    "It's 2024-05-12 and the price is $1,234.56 -- isn't that the best price? Yes, the best.",
    "def snake_case(x_1): return x_1 + 42  # __init__ and self.value_2",
    "O=C1CC[C@H](CN2CCN(CCOc3cc4ncnc(Nc5ccc(F)c(Cl)c5)c4cc3OC3CCCC3)CC2)O1",
    "[IN:GET_WEATHER [SL:LOCATION Maricopa County ] [SL:DATE_TIME for this week ] ]",
    "Émile et Zoë mangent des crêpes à Noël. 北京欢迎你。 😀😀 the end, the end.",
] * 3

TRICKY = [
    "", " ", "  ", "\n", "\t\r\n ", "a", "  leading and trailing  ",
    "multiple   spaces\n\n\nnewlines",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇫🇷", "CJK 汉字 かな カナ 한국어", "e\u0301 combining vs é precomposed",
    "\x00\x01\x1f\x7f control chars", "\ufeffBOM and \u200bzero width",
    "<extra_id_3> typed by a user <pad></s>",
    "don't 'quoted' it's we'll THEY'RE", "snake_case __init__ x_1 ___", "1234567890 3.14159 -42",
    "RTL עברית العربية mixed", "\u2028line\u2029sep", "math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∑∫√", "a" * 500, "tab\there",
    "ÅÄÖ åäö ß ẞ ﬁ ligature", "\U0010ffff max code point", "¡¿¡¿ punctuation!!! ...",
]


@pytest.fixture(scope="module")
def bpe():
    return T.train_bpe(CORPUS, 512, progress=False)


def test_pretokenizer_covers_every_character():
    # merges never cross words, so the words must concatenate back to the exact text
    for s in TRICKY + CORPUS:
        assert "".join(T._PRETOKENIZE.findall(s)) == s


def test_bpe_round_trip_tricky_strings(bpe):
    for s in TRICKY + CORPUS:
        ids = bpe.encode(s)
        assert bpe.decode(ids) == s, s
        assert all(3 <= i < bpe.size - 100 for i in ids)  # never pad/eos/unk or a sentinel


def test_bpe_round_trip_random_unicode(bpe):
    rng = random.Random(0)
    for _ in range(300):
        # random bytes made into valid UTF-8 (any code point that survives the decode)
        s = bytes(rng.randrange(256) for _ in range(rng.randrange(64))).decode(errors="ignore")
        assert bpe.decode(bpe.encode(s)) == s
        # random code points from the whole Unicode range, surrogates excluded (they are not UTF-8)
        s = "".join(chr(c) for c in (rng.randrange(0x110000) for _ in range(20))
                    if not 0xD800 <= c < 0xE000)
        assert bpe.decode(bpe.encode(s)) == s


def test_bpe_learns_and_compresses(bpe):
    assert len(bpe.merges) == 512 - 100 - 259  # the corpus repeats enough to fill the vocabulary
    # a frequent word becomes one token, " the" included with its space
    assert len(bpe.encode(" the")) == 1
    text = " ".join(CORPUS)
    assert len(bpe.encode(text)) < 0.5 * len(text.encode())


def naive_train(texts, n_merges, min_frequency=2):
    """Reference BPE: recount every pair of every word before each merge (slow, obviously right)."""
    counts = Counter(w for t in texts for w in T._PRETOKENIZE.findall(t))
    words = {w: [3 + b for b in w.encode()] for w in counts}
    merges = []
    for new_id in range(259, 259 + n_merges):
        pairs = Counter()
        for w, ids in words.items():
            for p in zip(ids, ids[1:]):
                pairs[p] += counts[w]
        if not pairs:
            break
        pair = min(pairs, key=lambda p: (-pairs[p], p))  # highest count, then smallest ids
        if pairs[pair] < min_frequency:
            break
        merges.append(pair)
        words = {w: T._merge(ids, pair, new_id) for w, ids in words.items()}
    return merges


def test_merge_is_left_to_right_and_non_overlapping():
    assert T._merge([5, 5, 5, 6, 5, 5, 5, 5], (5, 5), 9) == [9, 5, 6, 9, 9]
    assert T._merge([1, 2, 1, 2, 2, 1], (1, 2), 7) == [7, 7, 2, 1]


@pytest.mark.parametrize("min_frequency", [1, 2])
def test_bpe_incremental_training_matches_naive(min_frequency):
    text = CORPUS[:6]  # min_frequency 2 runs out of pairs after 46 merges: the early stop too
    tok = T.train_bpe(text, 359 + 150, min_frequency=min_frequency, progress=False)
    assert tok.merges == naive_train(text, 150, min_frequency)
    # encoding by merge rank gives the same words as training's merge-by-merge replay
    for word in {w for t in text for w in T._PRETOKENIZE.findall(t)}:
        ids = [3 + b for b in word.encode()]
        for new_id, pair in enumerate(tok.merges, 259):
            ids = T._merge(ids, pair, new_id)
        assert tok.encode(word) == ids


def test_bpe_deterministic_and_save_load(bpe, tmp_path):
    again = T.train_bpe(list(reversed(CORPUS)), 512, progress=False)  # other order, same corpus
    assert again.merges == bpe.merges
    path = str(tmp_path / "bpe.json")
    bpe.save(path)
    loaded = T.load_tokenizer(path)
    assert isinstance(loaded, T.BPETokenizer) and loaded.merges == bpe.merges
    for s in TRICKY:
        assert loaded.encode(s) == bpe.encode(s)


def test_bpe_min_frequency_stops_early():
    tok = T.train_bpe(["abcdefgh"], 1000, progress=False)  # each pair occurs once: no merge
    assert tok.merges == [] and tok.size == 1000 and tok.sentinel(0) == 999
    assert tok.decode(tok.encode("abcdefgh")) == "abcdefgh"


def test_sentinel_layout_and_decode(bpe):
    n = bpe.size
    assert (bpe.pad_id, bpe.eos_id, bpe.unk_id) == (0, 1, 2)
    assert bpe.sentinel(0) == n - 1 and bpe.sentinel(99) == n - 100
    assert bpe.model_vocab_size == 512
    ids = bpe.encode("hi")
    # pad/eos/-100 skipped (decode does not stop at eos), sentinels rendered
    assert (bpe.decode([bpe.sentinel(0)] + ids + [1, bpe.sentinel(99), 0, -100])
            == "<extra_id_0>hi<extra_id_99>")
    assert bpe.decode(torch.tensor(ids + [1, 0, 0])) == "hi"
    # literal "<extra_id_3>" text is plain bytes; it round-trips but is not the sentinel id
    assert bpe.sentinel(3) not in bpe.encode("<extra_id_3>")
    with pytest.raises(ValueError, match="outside"):
        bpe.decode([5000])
    with pytest.raises(ValueError, match="size"):
        T.train_bpe(CORPUS, 300)


def test_default_corpus_reads_every_layout(tmp_path):
    (tmp_path / "natural_text").mkdir()
    (tmp_path / "natural_text" / "train.txt").write_text("one\ttab\n\ntwo\n")  # lines as they are
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "train.jsonl").write_text('{"source": "s1", "target": "t1"}\n\n')
    (tmp_path / "b").mkdir()  # the original release: input<TAB>target
    (tmp_path / "b" / "train.txt").write_text("in1\tout1\nin2\tout2\n")
    assert list(T.default_corpus(str(tmp_path))) == ["one\ttab\n", "\n", "two\n", "s1", "t1",
                                                    "in1", "out1", "in2", "out2"]
    assert list(T.default_corpus(str(tmp_path), 5)) == ["one\ttab\n", "s1", "t1", "in1", "out1"]


def test_get_tokenizer_trains_caches_and_loads(tmp_path):
    data = tmp_path / "data"
    (data / "natural_text").mkdir(parents=True)
    natural = [c for c in CORPUS[:6] if "[IN:" not in c]  # natural text without the MTOP-like line
    (data / "natural_text" / "train.txt").write_text("\n".join(natural) + "\n")
    (data / "mtop").mkdir()
    rows = [{"source": "what is the weather", "target": "[IN:GET_WEATHER ]"}] * 5
    (data / "mtop" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = str(tmp_path / "cache" / "tok.json")
    tok = T.get_tokenizer(str(data), 400, path, progress=False)
    assert os.listdir(tmp_path / "cache") == ["tok.json"]  # no temporary file left behind
    assert tok.encode(" GET_WEATHER") != [3 + b for b in b" GET_WEATHER"]  # task text in the corpus
    assert T.get_tokenizer(str(data), 400, path).merges == tok.merges  # second call loads the cache
    with pytest.raises(config.UserError, match="size"):
        T.get_tokenizer(str(data), 512, path)
    # natural_only: the natural text alone (as T5's vocabulary saw C4), so no merge of task text
    nat = T.get_tokenizer(str(data), 400, str(tmp_path / "nat.json"), progress=False,
                          natural_only=True)
    assert list(T.default_corpus(str(data), natural_only=True)) == [c + "\n" for c in natural]
    assert len(nat.encode(" GET_WEATHER")) > len(tok.encode(" GET_WEATHER"))
    assert nat.merges != tok.merges
    (data / "mtop" / "train.jsonl").write_text('{"source": "x"}\n')
    with pytest.raises(config.UserError, match="train.jsonl:1"):
        T.get_tokenizer(str(data), 400, str(tmp_path / "other.json"))


def test_cli_help_and_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        T.main(["-h"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--size=8192" in out and "--natural_only=False" in out
    with pytest.raises(config.UserError, match="unknown setting --vocab"):
        T.main(["--vocab=3"])
    with pytest.raises(config.UserError, match="--size=300 must be >= 359"):
        T.main(["--size=300"])
    data = tmp_path / "data"
    (data / "natural_text").mkdir(parents=True)
    (data / "natural_text" / "train.txt").write_text("\n".join(CORPUS) + "\n")
    T.main([f"--data_dir={data}", "--size=400", f"--path={tmp_path / 't.json'}",
            "--natural_only=True"])
    assert "size 400" in capsys.readouterr().out
    want = T.train_bpe(CORPUS, 400, progress=False).merges
    assert T.load_tokenizer(str(tmp_path / "t.json")).merges == want


# Unigram reader on a hand-made T5-style tokenizer.json (vocabulary of 200: 3 specials, pieces,
# fillers, 100 sentinels at the top as in T5, so <extra_id_k> = 199 - k).
PIECES = [("▁", -2.0), ("▁he", -3.0), ("llo", -3.0), ("▁hello", -4.5), ("h", -5.0), ("e", -5.0),
          ("l", -5.0), ("o", -5.0), ("▁w", -3.0), ("or", -3.0), ("ld", -3.0), ("▁world", -10.0),
          ("w", -5.0), ("r", -5.0), ("d", -5.0), ("!", -3.0), ("▁a", -2.5)]


def unigram_spec(new_style=False):
    vocab = [["<pad>", 0.0], ["</s>", 0.0], ["<unk>", 0.0]] + [list(p) for p in PIECES]
    vocab += [[f"<unused_{i}>", -20.0] for i in range(100 - len(vocab))]
    vocab += [[f"<extra_id_{k}>", 0.0] for k in reversed(range(100))]
    added = [{"id": i, "content": c, "special": True}
             for i, c in enumerate(["<pad>", "</s>", "<unk>"])]
    added += [{"id": 199 - k, "content": f"<extra_id_{k}>", "special": True} for k in range(100)]
    precompiled = {"type": "Precompiled", "precompiled_charsmap": "AA=="}
    if new_style:  # tokenizers >= 0.19: Metaspace with prepend_scheme, a Replace for runs of spaces
        replace = {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}
        normalizer = {"type": "Sequence", "normalizers": [precompiled, replace]}
        pre = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    else:  # the t5-small file: WhitespaceSplit then Metaspace with add_prefix_space
        normalizer = precompiled
        meta = {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True}
        pre = {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, meta]}
    return {"version": "1.0", "added_tokens": added, "normalizer": normalizer, "pre_tokenizer": pre,
            "decoder": {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True},
            "model": {"type": "Unigram", "unk_id": 2, "vocab": vocab}}


@pytest.mark.parametrize("new_style", [False, True])
def test_unigram_segmentation_and_ids(tmp_path, new_style):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(unigram_spec(new_style)), encoding="utf-8")
    tok = T.load_tokenizer(str(path))
    assert isinstance(tok, T.UnigramTokenizer) and tok.size == 200 and tok.sentinel(5) == 194
    pid = {p: i for i, (p, _) in enumerate([("<pad>", 0), ("</s>", 0), ("<unk>", 0)] + PIECES)}
    # "▁hello" (-4.5) beats "▁he"+"llo" (-6); "▁w"+"or"+"ld" (-9) beats "▁world" (-10)
    hello_world = [pid["▁hello"], pid["▁w"], pid["or"], pid["ld"]]
    assert tok.encode("hello world") == hello_world
    assert tok.encode("  hello \n\t world!") == hello_world + [pid["!"]]  # whitespace runs collapse
    assert tok.encode("ｈｅｌｌｏ") == [pid["▁hello"]]  # Precompiled ~ NFKC: full-width letters fold
    # unknown characters: "▁" then one unk for the two unknown "Z"s (consecutive unks fuse)
    assert tok.encode("hello ZZ") == [pid["▁hello"], pid["▁"], 2]
    assert tok.encode("hello ZoZ") == [pid["▁hello"], pid["▁"], 2, pid["o"], 2]  # not across "o"
    # typed sentinel and special text map to their ids; the word after it gets its "▁" too
    assert tok.encode("hello<extra_id_5>world</s>") == [pid["▁hello"], 194] + hello_world[1:] + [1]
    assert tok.decode(hello_world + [1, 0, 0]) == "hello world"
    assert tok.decode([pid["▁hello"], 194, pid["▁a"]]) == "hello<extra_id_5> a"


def test_bad_tokenizer_files(tmp_path):
    spec = unigram_spec()
    spec["added_tokens"][5]["id"] = 150  # <extra_id_2> moved
    with pytest.raises(ValueError, match="T5 layout"):
        T.UnigramTokenizer(spec)
    spec = unigram_spec()
    spec["model"]["type"] = "WordPiece"
    bad = {"wordpiece.json": json.dumps(spec), "moved.json": json.dumps(unigram_spec() | {
        "added_tokens": [{"id": 150, "content": "<extra_id_2>"}]}), "text.json": "not json",
        "list.json": "[1, 2]", "bpe.json": json.dumps({"type": "byte_level_bpe", "size": 400}),
        "pattern.json": json.dumps({"type": "byte_level_bpe", "size": 400, "merges": [],
                                    "pretokenize_pattern": "x"})}
    for name, text in bad.items():  # one line naming the file, as a UserError
        (tmp_path / name).write_text(text)
        with pytest.raises(config.UserError, match=f"tokenizer file .*{name}"):
            T.load_tokenizer(str(tmp_path / name))
    with pytest.raises(config.UserError, match="neither"):
        T.load_tokenizer(str(tmp_path / "wordpiece.json"))


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get("DATA_DIR") or os.path.join(ROOT, "..", "shared", "data")


@pytest.mark.skipif(not os.path.isdir(os.path.join(DATA_DIR, "natural_text")),
                    reason="real data not found: set DATA_DIR or place it at ../shared/data")
def test_bpe_on_real_data(tmp_path):
    # a small tokenizer from a capped slice of every corpus file; round trip on unseen text
    tok = T.get_tokenizer(DATA_DIR, 1024, str(tmp_path / "tok.json"), max_chars_per_file=100_000,
                          progress=False)
    n_chars = n_tokens = 0
    for task in sorted(os.listdir(DATA_DIR)):
        if os.path.isfile(path := os.path.join(DATA_DIR, task, "validation.jsonl")):
            with open(path, encoding="utf-8") as f:
                for line in list(f)[:50]:
                    for text in (json.loads(line)["source"], json.loads(line)["target"]):
                        ids = tok.encode(text)
                        assert tok.decode(ids) == text
                        n_chars, n_tokens = n_chars + len(text), n_tokens + len(ids)
    assert n_tokens < 0.5 * n_chars  # even 1024 ids compress well below one token per character
