"""The downstream metrics of the paper (PAPER.md §1.1), written from their definitions with the stdlib only.

  * "em":    exact match of the raw strings (retrosynthesis, code translation; T5 qa_utils, no normalisation).
  * "em,f1": exact match + whitespace-token F1 (MTOP, WebQSP): T5's `qa_utils.semantic_parsing_metrics`,
             F1 from the multiset overlap of `str.split()` tokens, no normalisation.
  * "squad": SQuAD v1.1 EM/F1 (T5 `metrics.squad`): answers normalised (lowercase, punctuation removed,
             articles a/an/the removed, whitespace collapsed), the max over all gold answers per question.
  * "rouge": ROUGE-1/2/L/Lsum F-measure as in `rouge_score` (T5 `metrics.rouge`, CNNDM-10K): " . " is turned
             into " .\\n" first, so rougeLsum sees one sentence per line; tokens are lowercase [a-z0-9]+ runs
             (everything else is a separator), no stemming (rouge_score's default, which T5 kept).
All scores are x100 and averaged over examples. T5 reports ROUGE as the mid point of a bootstrap over
examples; we report the plain mean, which that bootstrap estimates (it differs only by resampling noise).

Use:   from metrics import compute_metrics; compute_metrics("em,f1", predictions, references) -> {"em":.., "f1":..}
Tests: python -m pytest -q tests/test_metrics.py
"""
import re
import string
from collections import Counter

# the metric each downstream task reports (PAPER.md §1.1, the `METRIC` column of the fine-tuning scripts)
TASK_METRIC = {"cnndm_10k": "rouge", "mtop": "em,f1", "webqsp": "em,f1", "retrosynthesis": "em",
               "code_translation": "em", "squad": "squad"}


def exact_match(prediction: str, reference: str) -> float:
    return float(prediction == reference)


def token_f1(prediction: str, reference: str) -> float:
    """F1 of whitespace tokens, counting repeated tokens as often as both sides hold them (T5 `_f1_score`).
    No overlap, including two empty strings, gives 0, as in T5."""
    pred, ref = prediction.split(), reference.split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


_PUNCTUATION = set(string.punctuation)  # ASCII only, as in the official SQuAD script


def normalize_squad(text: str) -> str:
    """Official SQuAD v1.1 normalisation, in its order: lowercase, drop punctuation, drop articles, collapse
    whitespace. Punctuation goes first, so "the-end" -> "theend" keeps no article."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_em_f1(prediction: str, answers: list[str]) -> tuple[float, float]:
    """(EM, F1) of one prediction against all its gold answers, each the max over answers."""
    if not answers:
        raise ValueError("a SQuAD example needs at least one gold answer")
    pred = normalize_squad(prediction)
    golds = [normalize_squad(a) for a in answers]
    return max(exact_match(pred, g) for g in golds), max(token_f1(pred, g) for g in golds)


# ---------------------------------------------------------------------------------------------------------
# ROUGE (Lin 2004), matching Google's rouge_score package with its defaults.

def rouge_tokenize(text: str) -> list[str]:
    """rouge_score's tokenizer: lowercase, every run of characters outside [a-z0-9] is a separator."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def _fmeasure(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def rouge_n(pred: list[str], ref: list[str], n: int) -> float:
    """F-measure of n-gram overlap (clipped counts) between token lists."""
    pred_ngrams = Counter(tuple(pred[i:i + n]) for i in range(len(pred) - n + 1))
    ref_ngrams = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
    overlap = sum((pred_ngrams & ref_ngrams).values())
    # max(.., 1): a text shorter than n has no n-grams and scores 0, not a division error
    return _fmeasure(overlap / max(sum(pred_ngrams.values()), 1), overlap / max(sum(ref_ngrams.values()), 1))


def _lcs_table(ref: list[str], pred: list[str]) -> list[list[int]]:
    """table[i][j] = length of the longest common subsequence of ref[:i] and pred[:j]."""
    table = [[0] * (len(pred) + 1) for _ in range(len(ref) + 1)]
    for i in range(1, len(ref) + 1):
        row, above, r = table[i], table[i - 1], ref[i - 1]
        for j in range(1, len(pred) + 1):
            row[j] = above[j - 1] + 1 if r == pred[j - 1] else max(above[j], row[j - 1])
    return table


def rouge_l(pred: list[str], ref: list[str]) -> float:
    """Sentence-level ROUGE-L: F-measure of the LCS length over the two whole texts."""
    if not pred or not ref:
        return 0.0
    lcs = _lcs_table(ref, pred)[-1][-1]
    return _fmeasure(lcs / len(pred), lcs / len(ref))


def _lcs_positions(ref: list[str], pred: list[str]) -> list[int]:
    """Positions in `ref` of one LCS, read back from the table with rouge_score's tie rule (which LCS is
    chosen changes the union in rougeLsum, so the rule must match)."""
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


def rouge_lsum(pred_sents: list[list[str]], ref_sents: list[list[str]]) -> float:
    """Summary-level ROUGE-L (Lin 2004 §3.2): for each reference sentence, the union of its LCS with every
    predicted sentence; hits are clipped by token counts so no token is counted twice (as ROUGE-1.5.5 does)."""
    m, n = sum(map(len, ref_sents)), sum(map(len, pred_sents))
    if not m or not n:
        return 0.0
    ref_left = Counter(t for s in ref_sents for t in s)
    pred_left = Counter(t for s in pred_sents for t in s)
    hits = 0
    for ref in ref_sents:
        union = sorted(set().union(*(_lcs_positions(ref, pred) for pred in pred_sents)))
        for token in (ref[i] for i in union):
            if ref_left[token] > 0 and pred_left[token] > 0:
                hits += 1
                ref_left[token] -= 1
                pred_left[token] -= 1
    return _fmeasure(hits / n, hits / m)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """The four ROUGE F-measures (in [0, 1]) of one summary, after T5's " . " -> " .\\n" sentence split."""
    prediction, reference = prediction.replace(" . ", " .\n"), reference.replace(" . ", " .\n")
    pred, ref = rouge_tokenize(prediction), rouge_tokenize(reference)
    # rougeLsum: one sentence per non-empty line (rouge_score splits on "\n" only)
    pred_sents = [rouge_tokenize(s) for s in prediction.split("\n") if s]
    ref_sents = [rouge_tokenize(s) for s in reference.split("\n") if s]
    return {"rouge1": rouge_n(pred, ref, 1), "rouge2": rouge_n(pred, ref, 2), "rougeL": rouge_l(pred, ref),
            "rougeLsum": rouge_lsum(pred_sents, ref_sents)}


# ---------------------------------------------------------------------------------------------------------

METRIC_NAMES = ("em", "em,f1", "squad", "rouge")


def compute_metrics(name: str, predictions: list[str], references: list) -> dict[str, float]:
    """Mean x100 of metric `name` over examples. References are strings, except for "squad", where each is
    the list of gold answers (a single string is taken as a one-answer list)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(METRIC_NAMES)}")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no examples to score")
    if name == "squad":
        pairs = [squad_em_f1(p, [r] if isinstance(r, str) else list(r)) for p, r in zip(predictions, references)]
        scores = {"em": [em for em, _ in pairs], "f1": [f1 for _, f1 in pairs]}
    elif name == "rouge":
        per_example = [rouge(p, r) for p, r in zip(predictions, references)]
        scores = {key: [s[key] for s in per_example] for key in per_example[0]}
    else:
        scores = {"em": [exact_match(p, r) for p, r in zip(predictions, references)]}
        if name == "em,f1":
            scores["f1"] = [token_f1(p, r) for p, r in zip(predictions, references)]
    return {key: 100.0 * sum(values) / len(values) for key, values in scores.items()}
