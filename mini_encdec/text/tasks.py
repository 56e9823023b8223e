"""Downstream tasks: three from the corpus (with the play split) and three synthetic ones.

From the plays (training examples from the training plays, evaluation from the
validation or test plays, so no play is seen in both):
  reply      a speech -> the next speech by another speaker in the same scene
             (generation; metrics: target NLL per token, ROUGE-L F1 of greedy outputs)
  genre      a speech -> one of the 6 genres (classification; accuracy)
  next_line  a speech and two candidates, the speech that follows it in the scene and a
             speech from elsewhere in the same play: which one follows? (binary choice;
             accuracy; score each candidate by its NLL given the speech, or fine-tune a
             classifier on `choice_pairs`)

Synthetic seq2seq tasks for fast classroom experiments, over a 41-id vocabulary of their
own (pad 0, eos 1, bos 2, unk 3, then the symbols 0-9, '+', a-z):
  reverse    "c a b"  -> "b a c"
  sort       "c a b"  -> "a b c"
  addition   "123+45" -> "168"
Metric: exact match of greedy outputs (`exact_match`).

Text examples are token ids: inputs = task prefix + text tokens (the text truncated from
the left to fit) + EOS, targets = reply tokens (truncated from the right) + EOS, so they
batch with batching.ExampleBatcher / collate_encdec / collate_decoder like pre-training
examples.

Task prefixes (SPEC.md section 7): every task's inputs start with a short instruction of its
own (`TASK_PREFIXES`), in both architectures, so a model fine-tuned on a mixture of tasks
reads which task it is asked to do (without one, a reply and a genre question look the
same: a bare speech, and a small model collapses onto the easier answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import numpy as np

from .corpus import GENRES, load_plays, speeches
from ..objectives.example import Example

IGNORE = -100


# The instruction each task's inputs start with (the same text for both architectures).
TASK_PREFIXES = {
    "reply": "Reply to this speech:",
    "genre": "Which kind of play is this speech from?",
}


def task_prefix(task: str, tokenizer) -> np.ndarray:
    """The token ids of `task`'s instruction (TASK_PREFIXES)."""
    if task not in TASK_PREFIXES:
        raise ValueError(f"task_prefix: argument 'task': expected one of "
                         f"{sorted(TASK_PREFIXES)}, got {task!r}")
    return np.asarray(tokenizer.encode(TASK_PREFIXES[task]), dtype=np.int64)


def _fit_inputs(ids: np.ndarray, length: int, eos_id: int,
                prefix: Optional[np.ndarray] = None) -> np.ndarray:
    """prefix, then the last tokens of `ids` (nearest the answer) that fit, then EOS:
    at most `length` tokens."""
    prefix = np.zeros(0, np.int64) if prefix is None else np.asarray(prefix, np.int64)
    room = length - 1 - len(prefix)
    if room < 1:
        raise ValueError(f"tasks: an input length of {length} leaves no room for the text "
                         f"after the {len(prefix)}-token task prefix and EOS")
    return np.concatenate([prefix, ids[max(0, len(ids) - room):], [eos_id]]).astype(np.int64)


def _fit_targets(ids: np.ndarray, length: int, eos_id: int) -> np.ndarray:
    """Keep the first length - 1 tokens, then EOS."""
    return np.concatenate([ids[:length - 1], [eos_id]]).astype(np.int64)


def _check_split(split: str, fn: str) -> None:
    if split not in ("train", "validation", "test"):
        raise ValueError(f"{fn}: argument 'split': expected 'train', 'validation' or 'test', "
                         f"got {split!r}")


# --- reply -------------------------------------------------------------------------------------

def reply_pairs(split: str, corpus_dir=None) -> list:
    """(speech text, reply text) pairs: the next speech by another speaker in the scene."""
    _check_split(split, "reply_pairs")
    kw = {} if corpus_dir is None else dict(corpus_dir=corpus_dir)
    out = []
    for play in load_plays(split, **kw):
        sp = speeches(play)
        for i, a in enumerate(sp):
            for b in sp[i + 1:]:
                if b.scene != a.scene:
                    break
                if b.speaker != a.speaker:
                    if a.text and b.text:
                        out.append((a.text, b.text))
                    break
    return out


def reply_examples(split: str, tokenizer, *, encoder_length: int = 128,
                   decoder_length: int = 128, corpus_dir=None, prefix: bool = True) -> list:
    """Reply pairs as Examples fitted to (encoder_length, decoder_length); the inputs
    start with the task prefix unless prefix=False."""
    eos = tokenizer.eos_id
    pre = task_prefix("reply", tokenizer) if prefix else None
    return [Example(_fit_inputs(tokenizer.encode(a), encoder_length, eos, pre),
                    _fit_targets(tokenizer.encode(b), decoder_length, eos))
            for a, b in reply_pairs(split, corpus_dir)]


# --- genre -------------------------------------------------------------------------------------

class ClassExample(NamedTuple):
    inputs: np.ndarray  # (P,) token ids ending in EOS
    label: int          # class index


def genre_pairs(split: str, *, min_chars: int = 40, corpus_dir=None) -> list:
    """(speech text, genre index into corpus.GENRES) for speeches of >= min_chars."""
    _check_split(split, "genre_pairs")
    kw = {} if corpus_dir is None else dict(corpus_dir=corpus_dir)
    return [(s.text, GENRES.index(s.genre)) for play in load_plays(split, **kw)
            for s in speeches(play) if len(s.text) >= min_chars]


def genre_examples(split: str, tokenizer, *, length: int = 128, min_chars: int = 40,
                   corpus_dir=None, prefix: bool = True) -> list:
    """Genre ClassExamples of at most `length` tokens; the inputs start with the task
    prefix unless prefix=False."""
    pre = task_prefix("genre", tokenizer) if prefix else None
    return [ClassExample(_fit_inputs(tokenizer.encode(t), length, tokenizer.eos_id, pre), g)
            for t, g in genre_pairs(split, min_chars=min_chars, corpus_dir=corpus_dir)]


def collate_classification(examples: Sequence[ClassExample], length: int, *,
                           pad_id: int = 0) -> dict:
    """{input_ids (B, L), attention_mask (B, L), class_labels (B,)}; the classifier reads
    the last real token, index attention_mask.sum(1) - 1 (encoder or decoder)."""
    b = len(examples)
    input_ids = np.full((b, length), pad_id, dtype=np.int64)
    mask = np.zeros((b, length), dtype=np.int64)
    for i, ex in enumerate(examples):
        if len(ex.inputs) > length:
            raise ValueError(f"collate_classification: example {i} has {len(ex.inputs)} "
                             f"tokens, more than length={length}")
        input_ids[i, :len(ex.inputs)] = ex.inputs
        mask[i, :len(ex.inputs)] = 1
    labels = np.array([ex.label for ex in examples], dtype=np.int64)
    return dict(input_ids=input_ids, attention_mask=mask, class_labels=labels)


# --- next line -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChoiceExample:
    context: str        # a speech
    candidates: tuple   # two speeches
    label: int          # index of the one that follows the context


def next_line_examples(split: str, *, seed: int = 0, corpus_dir=None) -> list:
    """One ChoiceExample per speech that has a following speech in its scene; the
    distractor is a speech of the same play at least 10 speeches away. Deterministic."""
    _check_split(split, "next_line_examples")
    kw = {} if corpus_dir is None else dict(corpus_dir=corpus_dir)
    rng = np.random.default_rng([seed, 3])
    out = []
    for play in load_plays(split, **kw):
        sp = [s for s in speeches(play) if s.text]
        for i in range(len(sp) - 1):
            if sp[i + 1].scene != sp[i].scene:
                continue
            far = [j for j in (int(rng.integers(len(sp))) for _ in range(8))
                   if abs(j - i) >= 10 and sp[j].text != sp[i + 1].text]
            if not far:
                continue
            label = int(rng.integers(2))
            cands = [sp[far[0]].text]
            cands.insert(label, sp[i + 1].text)
            out.append(ChoiceExample(sp[i].text, tuple(cands), label))
    return out


def choice_pairs(example: ChoiceExample, tokenizer, *, encoder_length: int = 128,
                 decoder_length: int = 128) -> list:
    """[Example(context, candidate_0), Example(context, candidate_1)] for scoring each
    candidate by its NLL; predict argmin, compare with example.label."""
    eos = tokenizer.eos_id
    ctx = _fit_inputs(tokenizer.encode(example.context), encoder_length, eos)
    return [Example(ctx, _fit_targets(tokenizer.encode(c), decoder_length, eos))
            for c in example.candidates]


# --- metrics -------------------------------------------------------------------------------------

def _until_eos(seq, eos_id: Optional[int]) -> list:
    seq = [int(t) for t in np.asarray(seq).reshape(-1) if int(t) != IGNORE]
    if eos_id is not None and eos_id in seq:
        seq = seq[:seq.index(eos_id)]
    return seq


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len a * len b))."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidate, reference, *, eos_id: Optional[int] = 1) -> float:
    """ROUGE-L F1 on token ids (everything from the first EOS on ignored):
    P = LCS / len(candidate), R = LCS / len(reference), F1 = 2PR / (P + R)."""
    c, r = _until_eos(candidate, eos_id), _until_eos(reference, eos_id)
    if not c or not r:
        return float(c == r)
    lcs = lcs_length(c, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(c), lcs / len(r)
    return 2 * p * rec / (p + rec)


def exact_match(predictions, targets, *, eos_id: Optional[int] = 1) -> float:
    """Fraction of rows whose tokens up to the first EOS are equal (-100 ignored)."""
    preds, tgts = list(predictions), list(targets)
    if len(preds) != len(tgts) or not preds:
        raise ValueError(f"exact_match: expected equally many predictions and targets (> 0), "
                         f"got {len(preds)} and {len(tgts)}")
    return float(np.mean([_until_eos(p, eos_id) == _until_eos(t, eos_id)
                          for p, t in zip(preds, tgts)]))


def accuracy(predicted_labels, labels) -> float:
    p, l = np.asarray(predicted_labels), np.asarray(labels)
    if p.shape != l.shape or p.size == 0:
        raise ValueError(f"accuracy: expected equal non-empty shapes, got {p.shape} and "
                         f"{l.shape}")
    return float(np.mean(p == l))


# --- synthetic tasks ----------------------------------------------------------------------------

SYNTH_SYMBOLS = "0123456789+abcdefghijklmnopqrstuvwxyz"
SYNTH_FIRST_ID = 4  # after pad 0, eos 1, bos 2, unk 3
SYNTH_VOCAB_SIZE = SYNTH_FIRST_ID + len(SYNTH_SYMBOLS)
SYNTHETIC_TASKS = ("reverse", "sort", "addition")


def synth_encode(text: str) -> np.ndarray:
    """Symbols -> ids of the synthetic vocabulary (no EOS)."""
    bad = [c for c in text if c not in SYNTH_SYMBOLS]
    if bad:
        raise ValueError(f"synth_encode: argument 'text': expected symbols from "
                         f"{SYNTH_SYMBOLS!r}, got {bad[0]!r}")
    return np.array([SYNTH_FIRST_ID + SYNTH_SYMBOLS.index(c) for c in text], dtype=np.int64)


def synth_decode(ids) -> str:
    """Ids -> symbols, stopping at EOS, skipping pad/bos."""
    out = []
    for i in np.asarray(ids).reshape(-1):
        i = int(i)
        if i == 1:
            break
        if i >= SYNTH_FIRST_ID:
            out.append(SYNTH_SYMBOLS[i - SYNTH_FIRST_ID])
    return "".join(out)


def synthetic_pair(task: str, rng: np.random.Generator, *, min_len: int = 2,
                   max_len: int = 8, alphabet: int = 10, max_digits: int = 3) -> tuple:
    """One (input string, target string). reverse/sort: a random string of min_len..max_len
    symbols from the first `alphabet` letters; addition: two numbers of 1..max_digits."""
    if task in ("reverse", "sort"):
        if not 1 <= alphabet <= 26:
            raise ValueError(f"synthetic_pair: argument 'alphabet': expected 1..26, got "
                             f"{alphabet}")
        if not 1 <= min_len <= max_len:
            raise ValueError(f"synthetic_pair: expected 1 <= min_len <= max_len, got "
                             f"{min_len}, {max_len}")
        n = int(rng.integers(min_len, max_len + 1))
        s = "".join(SYNTH_SYMBOLS[11 + int(k)] for k in rng.integers(0, alphabet, size=n))
        return s, (s[::-1] if task == "reverse" else "".join(sorted(s)))
    if task == "addition":
        if max_digits < 1:
            raise ValueError(f"synthetic_pair: argument 'max_digits': expected >= 1, got "
                             f"{max_digits}")
        a, b = (int(rng.integers(0, 10 ** int(rng.integers(1, max_digits + 1))))
                for _ in range(2))
        return f"{a}+{b}", str(a + b)
    raise ValueError(f"synthetic_pair: argument 'task': expected one of {SYNTHETIC_TASKS}, "
                     f"got {task!r}")


def synthetic_examples(task: str, n: int, seed: int = 0, **kwargs) -> list:
    """n Examples (inputs + EOS, targets + EOS) of a synthetic task, from one seed."""
    rng = np.random.default_rng([seed, 4, SYNTHETIC_TASKS.index(task)
                                 if task in SYNTHETIC_TASKS else 99])
    out = []
    for _ in range(n):
        x, y = synthetic_pair(task, rng, **kwargs)
        out.append(Example(np.append(synth_encode(x), 1), np.append(synth_encode(y), 1)))
    return out
