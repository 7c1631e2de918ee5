"""Tests for metrics.py: every metric against cases computed by hand.
Run: python -m pytest -q tests/test_metrics.py"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from metrics import (compute_metrics, exact_match, normalize_squad, rouge, rouge_tokenize,
                     squad_em_f1, token_f1)


def test_exact_match_is_raw():
    assert exact_match("[IN:A ]", "[IN:A ]") == 1.0
    # no normalisation at all: case, trailing space and punctuation all count
    assert exact_match("[in:a ]", "[IN:A ]") == 0.0
    assert exact_match("abc ", "abc") == 0.0


def test_token_f1_hand_computed():
    # pred tokens a a b c, ref tokens a b b d: overlap = min(2,1) a + min(1,2) b = 2
    # precision 2/4, recall 2/4 -> F1 0.5
    assert token_f1("a a b c", "a b b d") == pytest.approx(0.5)
    # pred "x y", ref "x y z": P = 1, R = 2/3 -> F1 = 2 * (2/3) / (5/3) = 0.8
    assert token_f1("x y", "x y z") == pytest.approx(0.8)
    assert token_f1("X y", "x y") == pytest.approx(0.5)  # case-sensitive, no normalisation
    assert token_f1("", "") == 0.0  # T5's definition: no overlap -> 0, even for two empty strings
    assert token_f1("a", "") == 0.0


def test_squad_normalisation():
    assert normalize_squad("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_squad("an apple, a pear") == "apple pear"
    # punctuation is removed before articles: "the-end" -> "theend", which has no article left
    assert normalize_squad("The-end") == "theend"
    assert normalize_squad("Theory") == "theory"  # whole words only
    assert normalize_squad("  A\tB\n") == "b"  # "a" is an article once lowercased


def test_squad_max_over_answers():
    # gold answers: "the Denver Broncos" -> "denver broncos", "Broncos" -> "broncos"
    # pred "Denver Broncos." -> "denver broncos": EM 1 against the first
    assert squad_em_f1("Denver Broncos.", ["the Denver Broncos", "Broncos"]) == (1.0, 1.0)
    # pred "Broncos team" vs "denver broncos": overlap 1, P 1/2, R 1/2, F1 .5;
    # vs "broncos": P 1/2, R 1 -> 2/3
    em, f1 = squad_em_f1("Broncos team", ["the Denver Broncos", "Broncos"])
    assert em == 0.0 and f1 == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        squad_em_f1("x", [])


def test_rouge_tokenizer():
    assert (rouge_tokenize("Hello, World! It's 2-for-1 café")
            == ["hello", "world", "it", "s", "2", "for", "1", "caf"])


def test_rouge_worked_example():
    ref = "the cat sat on the mat . it was happy ."
    pred = "the cat was on the mat . it sat happily ."
    # " . " -> " .\n" gives two sentences each; tokens (dots dropped):
    #   ref  = the cat sat on the mat | it was happy       (9 tokens)
    #   pred = the cat was on the mat | it sat happily     (9 tokens)
    # ROUGE-1: common unigrams the x2, cat, sat, on, mat, it, was = 8 -> P = R = 8/9
    # ROUGE-2: ref bigrams (the cat)(cat sat)(sat on)(on the)(the mat)(mat it)(it was)(was happy),
    #          pred (the cat)(cat was)(was on)(on the)(the mat)(mat it)(it sat)(sat happily);
    #          common: the cat, on the, the mat, mat it = 4 of 8 each -> 1/2
    scores = rouge(pred, ref)
    assert scores["rouge1"] == pytest.approx(8 / 9)
    assert scores["rouge2"] == pytest.approx(1 / 2)


def test_rouge_asymmetric_and_empty():
    # pred "a b" vs ref "a b c d": P = 1, R = 1/2 -> F = 2/3 for rouge1;
    # bigrams: (a b) of 1 and 3 -> P 1, R 1/3 -> 1/2
    s = rouge("a b", "a b c d")
    assert s["rouge1"] == pytest.approx(2 / 3) and s["rouge2"] == pytest.approx(0.5)
    assert rouge("", "a b") == {"rouge1": 0.0, "rouge2": 0.0}
    assert rouge("a", "a")["rouge2"] == 0.0  # no bigrams on either side: 0, not an error


def test_compute_metrics_dispatch():
    out = compute_metrics("em,f1", ["a b", "c"], ["a b", "d"])
    assert out == {"em": 50.0, "f1": 50.0}
    assert compute_metrics("em", ["x", "y"], ["x", "z"]) == {"em": 50.0}
    out = compute_metrics("squad", ["Denver", "the cat"], [["Denver Broncos"], "cat"])
    # example 1: EM 0, F1 = 2 * 1 * 1/2 / 1.5 = 2/3; example 2: EM 1, F1 1
    assert out["em"] == pytest.approx(50.0) and out["f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    out = compute_metrics("rouge", ["a b", "c"], ["a b c d", "c"])
    assert set(out) == {"rouge1", "rouge2"}
    assert out["rouge1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    with pytest.raises(ValueError, match=r"metric 'bleu' \(known: em, em,f1, squad, rouge\)"):
        compute_metrics("bleu", ["a"], ["a"])
    with pytest.raises(ValueError, match="of 1 predictions and 2 references"):
        compute_metrics("em", ["a"], ["a", "b"])
    with pytest.raises(ValueError):
        compute_metrics("em", [], [])
