"""metrics.py: the paper's downstream metrics, written from their definitions with the stdlib only.

  "em":    exact match of the raw strings (retrosynthesis, code translation; T5's qa_utils).
  "em,f1": exact match + whitespace-token F1, no normalisation (MTOP, WebQSP).
  "squad": SQuAD v1.1 EM/F1 (T5 `metrics.squad`): answers normalised, max over the gold answers.
  "rouge": ROUGE-1/2 F-measure (Lin 2004) as `rouge_score` computes it, unstemmed (CNNDM).
Scores are x100 means over examples (T5's ROUGE, a bootstrap's mid point, estimates the same).
Reading order: ..., pretrain.py, metrics.py (here), finetune.py, ... Next: finetune.py.
"""
import re, string
from collections import Counter

def exact_match(prediction: str, reference: str) -> float:
    return float(prediction == reference)

def token_f1(prediction: str, reference: str) -> float:
    """F1 of whitespace tokens as multisets (T5's `_f1_score`): no overlap (even "" vs "") is 0."""
    pred, ref = prediction.split(), reference.split()
    return _f1(sum((Counter(pred) & Counter(ref)).values()), len(pred), len(ref))

def normalize_squad(text: str) -> str:
    """SQuAD v1.1's order: lowercase, drop punctuation ("the-end" -> "theend"), articles, spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)  # ASCII, as SQuAD's
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())

def squad_em_f1(prediction: str, answers: list[str] | str) -> tuple[float, float]:
    """(EM, F1) of one prediction, each the max over its gold answers (a list, or one string)."""
    golds = [normalize_squad(a) for a in ([answers] if isinstance(answers, str) else answers)]
    pred = normalize_squad(prediction)  # no answer: max() raises ValueError
    return max(exact_match(pred, g) for g in golds), max(token_f1(pred, g) for g in golds)

def rouge_tokenize(text: str) -> list[str]:  # every run outside [a-z0-9] separates
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()

def _f1(hits: int, n_pred: int, n_ref: int) -> float:  # F-measure; an empty side scores 0
    precision, recall = hits / max(n_pred, 1), hits / max(n_ref, 1)
    return 2 * precision * recall / (precision + recall) if hits else 0.0

def _rouge_n(pred: list[str], ref: list[str], n: int) -> float:
    p, r = (Counter(tuple(x[i:i + n]) for i in range(len(x) - n + 1)) for x in (pred, ref))
    return _f1(sum((p & r).values()), sum(p.values()), sum(r.values()))

def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1 (the paper's CNNDM score) and ROUGE-2 F-measures, in [0, 1], of one summary."""
    pred, ref = rouge_tokenize(prediction), rouge_tokenize(reference)
    return {"rouge1": _rouge_n(pred, ref, 1), "rouge2": _rouge_n(pred, ref, 2)}

METRICS = {"em": lambda p, r: {"em": exact_match(p, r)},  # name -> the scores of one example
           "em,f1": lambda p, r: {"em": exact_match(p, r), "f1": token_f1(p, r)},
           "squad": lambda p, r: dict(zip(("em", "f1"), squad_em_f1(p, r))), "rouge": rouge}

def compute_metrics(name: str, predictions: list[str], references: list) -> dict[str, float]:
    """Mean x100 of metric `name`; a "squad" reference is a list of gold answers (or one string)."""
    if name not in METRICS or len(predictions) != len(references) or not predictions:
        raise ValueError(f"metric {name!r} (known: {', '.join(METRICS)}) of {len(predictions)} "
                         f"predictions and {len(references)} references (as many, at least one)")
    each = [METRICS[name](p, r) for p, r in zip(predictions, references)]
    return {key: 100.0 * sum(s[key] for s in each) / len(each) for key in each[0]}
