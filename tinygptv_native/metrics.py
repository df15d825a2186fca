"""Scores of the benchmark tasks: the rules of TinyGPT-V's own evaluation script and the benchmarks'
standard metrics (VQA accuracy with its answer normalisation, exact match, ROC-AUC).

Everything here is plain Python on strings and numbers, so that it can be checked by hand.
"""
from __future__ import annotations

import re
from typing import Iterable, List, Optional, Sequence

# ---- the standard VQA answer normalisation --------------------------------------------------------
# (numbers spelt out become digits, articles go, punctuation is dropped or becomes a space, common
# contractions written without their apostrophe get it back)

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebodyd": "somebody'd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've",
    "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD = re.compile(r"\.(?!\d)")          # a full stop that is not a decimal point
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")   # 1,000


def _punctuation(text: str) -> str:
    out = text
    glued = _DIGIT_COMMA.search(text) is not None
    for p in _PUNCT:
        # a mark next to a space (or any text with a thousands comma) is dropped; one inside a word
        # ("black-and-white") becomes a space
        if (p + " " in text or " " + p in text) or glued:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def _digits_articles(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """The VQA evaluation's answer normalisation: whitespace, punctuation, number words, articles,
    contractions ("Two dogs." -> "2 dogs", "the black-and-white cat" -> "black and white cat")."""
    t = str(text).replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(_punctuation(t))


def vqa_accuracy(answer: str, gt_answers: Sequence[str]) -> float:
    """VQA accuracy of one answer against the human answers (ten for VQA v2 and VizWiz): for each
    human answer left out in turn, min(1, matches among the others / 3); the mean of those. Both sides
    normalised."""
    gts = [normalize_answer(a) for a in gt_answers]
    if not gts:
        return 0.0
    a = normalize_answer(answer)
    accs = []
    for i in range(len(gts)):
        matches = sum(1 for j, g in enumerate(gts) if j != i and g == a)
        accs.append(min(1.0, matches / 3.0))
    return sum(accs) / len(accs)


def exact_match(answer: str, gt: str) -> float:
    """1.0 when the normalised answer equals the normalised ground truth."""
    return float(normalize_answer(answer) == normalize_answer(gt))


def yes_no(answer: str, yes=("yes", "true"), no=("no", "false")) -> Optional[bool]:
    """True / False from the first word of a normalised answer ("Yes, it is." -> True), None otherwise."""
    words = normalize_answer(answer).split()
    if not words:
        return None
    if words[0] in yes:
        return True
    if words[0] in no:
        return False
    return None


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> Optional[float]:
    """Area under the ROC curve (the Mann-Whitney statistic; tied scores count one half). None when
    the labels are all of one class."""
    pos = [s for y, s in zip(labels, scores) if int(y) == 1]
    neg = [s for y, s in zip(labels, scores) if int(y) != 1]
    if not pos or not neg:
        return None
    # rank-based: O(n log n)
    pairs = sorted((s, int(y) == 1) for y, s in zip(labels, scores))
    rank_sum = 0.0
    i = 0
    while i < len(pairs):
        j = i
        while j + 1 < len(pairs) and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        mid = (i + j) / 2.0 + 1.0  # mean rank of the tied block (1-based)
        rank_sum += mid * sum(1 for k in range(i, j + 1) if pairs[k][1])
        i = j + 1
    n_pos, n_neg = len(pos), len(neg)
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


# ---- the rules of TinyGPT-V's eval_scripts/eval_vqa.py ---------------------------------------------

def reference_clean(text: str) -> str:
    """What the reference model.generate() returns of a decoded answer: cut at "</s>", "<s>" removed,
    what follows the last "[/INST]", stripped."""
    return text.split("</s>")[0].replace("<s>", "").split("[/INST]")[-1].strip()


def reference_short_answer(text: str) -> str:
    """The answer as the reference cuts it for VizWiz and Hateful Memes: before the first "###", after
    the last "Assistant:", stripped."""
    return text.split("###")[0].split("Assistant:")[-1].strip()


def paper_gqa(raw: str, label: str) -> float:
    """GQA: 1 when the label is a substring of the lower-cased answer (the whole generated text)."""
    return float(str(label) in raw.lower())


def paper_vsr(raw: str, label: str) -> float:
    """VSR, counted exactly as the reference counts: 1 when "true"/"false" (the label) is in the
    lower-cased answer, plus 1 more when "yes" (label true) or "no" (label false) is in it. An answer
    holding both words counts 2, so the reference's percentage can exceed 100."""
    a = raw.lower()
    n = float(label.lower() in a)
    if label.lower() == "true" and "yes" in a:
        n += 1
    if label.lower() == "false" and "no" in a:
        n += 1
    return n


def paper_vizwiz(answer: str, gt_answers: Iterable[str]) -> float:
    """VizWiz: the ten answers joined with "_" and split again; each counts when it equals the answer,
    contains it or is contained in it (case-insensitive); min(count / 3, 1). An empty answer is in
    every ground truth, so it scores 1."""
    a = answer.lower()
    count = 0
    for gt in "_".join(gt_answers).split("_"):
        g = gt.lower()
        if g == a or g in a or a in g:
            count += 1
    return min(count / 3.0, 1.0)


def paper_hm_prediction(answer: str) -> Optional[int]:
    """Hateful Memes: 1 when "yes" is in the lower-cased answer, else 0 when "no" is, else None
    (the reference counts such an answer wrong)."""
    a = answer.lower()
    if "yes" in a:
        return 1
    if "no" in a:
        return 0
    return None


def argmax_first(values: Sequence[float]) -> int:
    """The index of the largest value (the first one on ties)."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def mean(xs: List[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0
