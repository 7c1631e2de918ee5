"""metrics.py: the paper's downstream metrics, written from their definitions with the stdlib only.

  "em":    exact match of the raw strings (retrosynthesis, code translation; T5's qa_utils).
  "em,f1": exact match + whitespace-token F1, no normalisation (MTOP, WebQSP).
  "squad": SQuAD v1.1 EM/F1 (T5 `metrics.squad`): answers normalised, max over the gold answers.
  "rouge": ROUGE-1/2/L/Lsum F-measure (Lin 2004) as `rouge_score` computes it, unstemmed (CNNDM).
Scores are x100 means over examples (T5's ROUGE, a bootstrap's mid point, estimates the same).
Reading order: ..., pretrain.py, metrics.py (here), finetune.py, ... Next: finetune.py.
"""
import re, string
from collections import Counter

_PUNCTUATION = set(string.punctuation)  # ASCII only, as in the official SQuAD script

def exact_match(prediction: str, reference: str) -> float:
    return float(prediction == reference)

def token_f1(prediction: str, reference: str) -> float:
    """F1 of whitespace tokens as multisets (T5's `_f1_score`): no overlap (even "" vs "") is 0."""
    pred, ref = prediction.split(), reference.split()
    same = sum((Counter(pred) & Counter(ref)).values())
    return 0.0 if same == 0 else _fmeasure(same / len(pred), same / len(ref))

def normalize_squad(text: str) -> str:
    """SQuAD v1.1's order: lowercase, drop punctuation ("the-end" -> "theend"), articles, spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())

def squad_em_f1(prediction: str, answers: list[str]) -> tuple[float, float]:
    """(EM, F1) of one prediction, each the max over its gold answers."""
    if not answers:
        raise ValueError("a SQuAD example needs at least one gold answer")
    pred, golds = normalize_squad(prediction), [normalize_squad(a) for a in answers]
    return max(exact_match(pred, g) for g in golds), max(token_f1(pred, g) for g in golds)

def rouge_tokenize(text: str) -> list[str]:  # every run outside [a-z0-9] separates
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()

def _fmeasure(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0

def _rouge_n(pred: list[str], ref: list[str], n: int) -> float:
    p, r = (Counter(tuple(x[i:i + n]) for i in range(len(x) - n + 1)) for x in (pred, ref))
    overlap = sum((p & r).values())  # max(.., 1): a text shorter than n scores 0, not an error
    return _fmeasure(overlap / max(sum(p.values()), 1), overlap / max(sum(r.values()), 1))

def _lcs_table(ref: list[str], pred: list[str]) -> list[list[int]]:
    """table[i][j] = length of the longest common subsequence of ref[:i] and pred[:j]."""
    table = [[0] * (len(pred) + 1) for _ in range(len(ref) + 1)]
    for i in range(1, len(ref) + 1):
        row, above, r = table[i], table[i - 1], ref[i - 1]
        for j in range(1, len(pred) + 1):
            row[j] = above[j - 1] + 1 if r == pred[j - 1] else max(above[j], row[j - 1])
    return table

def _lcs_positions(ref: list[str], pred: list[str]) -> list[int]:
    """Positions in `ref` of one LCS, by rouge_score's tie rule (it decides rougeLsum's union)."""
    table, i, j, positions = _lcs_table(ref, pred), len(ref), len(pred), []
    while i > 0 and j > 0:
        if ref[i - 1] == pred[j - 1]:
            positions.append(i - 1)
            i, j = i - 1, j - 1
        elif table[i][j - 1] > table[i - 1][j]:
            j -= 1
        else:
            i -= 1
    return positions

def _rouge_lsum(pred_sents: list[list[str]], ref_sents: list[list[str]]) -> float:
    """Summary-level ROUGE-L: per reference sentence, the union of its LCS with every predicted
    sentence; hits clipped by token counts so no token counts twice (as ROUGE-1.5.5)."""
    m, n = sum(map(len, ref_sents)), sum(map(len, pred_sents))
    if not m * n:
        return 0.0
    union = Counter(ref[i] for ref in ref_sents  # the union of LCS positions per ref sentence
                    for i in set().union(*(_lcs_positions(ref, pred) for pred in pred_sents)))
    hits = sum((union & Counter(t for s in pred_sents for t in s)).values())  # within ref's counts
    return _fmeasure(hits / n, hits / m)

def rouge(prediction: str, reference: str) -> dict[str, float]:
    """The four ROUGE F-measures (in [0, 1]) of one summary. T5 turns " . " into " .\\n" first, so
    rougeLsum sees one sentence per line (rouge_score splits on "\\n" only)."""
    prediction, reference = prediction.replace(" . ", " .\n"), reference.replace(" . ", " .\n")
    pred, ref = rouge_tokenize(prediction), rouge_tokenize(reference)
    lcs = _lcs_table(ref, pred)[-1][-1] if pred and ref else 0
    sents = [[rouge_tokenize(s) for s in x.split("\n") if s] for x in (prediction, reference)]
    return {"rouge1": _rouge_n(pred, ref, 1), "rouge2": _rouge_n(pred, ref, 2),
            "rougeL": _fmeasure(lcs / len(pred), lcs / len(ref)) if lcs else 0.0,
            "rougeLsum": _rouge_lsum(*sents)}

METRICS = {"em": lambda p, r: {"em": exact_match(p, r)},  # name -> the scores of one example
           "em,f1": lambda p, r: {"em": exact_match(p, r), "f1": token_f1(p, r)},
           "squad": lambda p, r: dict(zip(("em", "f1"), squad_em_f1(p, r))),
           "rouge": rouge}

def compute_metrics(name: str, predictions: list[str], references: list) -> dict[str, float]:
    """Mean x100 of metric `name`; a "squad" reference is a list of gold answers (or one string)."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"{len(predictions)} predictions and {len(references)} references")
    if name == "squad":
        references = [[r] if isinstance(r, str) else list(r) for r in references]
    each = [METRICS[name](p, r) for p, r in zip(predictions, references)]
    return {key: 100.0 * sum(s[key] for s in each) / len(each) for key in each[0]}
