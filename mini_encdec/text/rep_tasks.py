"""Representation tasks from the plays, in the spirit of SuperGLUE: binary decisions a
classification probe on the model's representation makes (models/classifier.py reads the
last real token; the encoder's for the encoder-decoder).

Every task is built from the plays of one split (training examples from the training
plays, validation and test examples from their own plays), is balanced (labels 0 and 1
equally likely, drawn per example from the generator seeded (seed, TAG, play, i)) and
deterministic for a seed. Inputs start with the task's instruction (INSTRUCTIONS) and end
with EOS; at most `length` tokens.

  next_speech   "A <sep> B": does B answer A (the next speech, by another speaker, in the
                same scene: label 1), or is B a speech of the same play from another scene
                (label 0)? A keeps its last tokens, B its first, half the room each.
  speaker       three consecutive speeches of a scene, the middle speaker's name masked,
                then a name: "Is it Y?". Y is the masked speaker (1) or another speaker of
                the same scene (0). The three speeches are cut to a third of the room each.
  replaced_word a speech in which one word was replaced by a word drawn from the
                training plays' word frequencies (1), or the speech untouched (0). The
                example remembers which third of the speech's words held the replacement
                (`where`: 0, 1, 2; -1 for untouched speeches), so accuracy can be read by
                thirds of the input. An example whose replacement would not fit the
                length is left out (its label would have no visible evidence).
  replaced_words  as replaced_word, with REPLACED consecutive words replaced (`where`:
                the third that held the middle one).
  same_scene    "A <sep> B": is B another speech of A's scene (at least two speeches away:
                label 1), or a speech of another play of the same split (label 0)? Both
                labels draw B from the same plays' speeches, so a bag of words over the
                pair sees no difference: only comparing A with B tells.
  word_order    a speech in which SPAN consecutive words were shuffled (1), or the speech
                untouched (0). Both labels hold the same words, so a bag of words sees no
                difference: only word order tells. `where` is the third of the speech's
                words that held the shuffled span's centre (-1 for untouched speeches).

`max_examples` (smoke tests only) stops after the first plays that give that many.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import NamedTuple, Optional

import numpy as np

from .corpus import load_plays, speeches

TASKS = ("next_speech", "speaker", "replaced_word", "word_order", "same_scene",
         "replaced_words")
# the tasks whose examples remember where the evidence sits (`where`, by thirds)
POSITIONAL_TASKS = ("replaced_word", "word_order", "replaced_words")
INSTRUCTIONS = {
    "next_speech": "Does the second speech answer the first?",
    "speaker": "Who speaks the masked speech?",
    "replaced_word": "Was a word of this speech replaced?",
    "word_order": "Are the words of this speech in their order?",
    "same_scene": "Are both speeches from the same scene?",
    "replaced_words": "Were words of this speech replaced?",
}
SEP = "\n<sep>\n"
MASK_NAME = "???"
_TAGS = {"next_speech": 41, "speaker": 42, "replaced_word": 43, "word_order": 44,
         "same_scene": 45, "replaced_words": 46}
_WORD = re.compile(r"[A-Za-z]{3,}")
MIN_CHARS = 40   # speeches shorter than this carry too little to decide on


class RepExample(NamedTuple):
    inputs: np.ndarray   # (P,) token ids ending in EOS
    label: int           # 0 or 1
    where: int = -1      # replaced_word, word_order: the third of the words that was changed


def _split_plays(split: str, corpus_dir=None) -> list:
    if split not in ("train", "validation", "test"):
        raise ValueError(f"rep_tasks: argument 'split': expected 'train', 'validation' or "
                         f"'test', got {split!r}")
    kw = {} if corpus_dir is None else dict(corpus_dir=corpus_dir)
    return load_plays(split, **kw)


def _name(speaker: str) -> str:
    return " ".join(speaker.split()).lower()


def _encode(tok, text: str) -> np.ndarray:
    return np.asarray(tok.encode(text), dtype=np.int64)


def _assemble(tok, task: str, parts: list, length: int) -> np.ndarray:
    """instruction + parts (already cut to fit) + EOS."""
    ids = np.concatenate([_encode(tok, INSTRUCTIONS[task] + "\n")] + parts +
                         [np.array([tok.eos_id], np.int64)])
    if len(ids) > length:
        raise AssertionError(f"{task}: {len(ids)} tokens > {length}")  # _room() prevents it
    return ids


def _room(tok, task: str, length: int, fixed: int) -> int:
    room = length - len(_encode(tok, INSTRUCTIONS[task] + "\n")) - 1 - fixed
    if room < 12:
        raise ValueError(f"rep_tasks: a length of {length} tokens leaves no room for "
                         f"{task}'s text")
    return room


# --- next-speech verification ------------------------------------------------------------------

def next_speech_examples(split: str, tok, *, length: int = 128, seed: int = 0,
                         corpus_dir=None, max_examples: Optional[int] = None) -> list:
    sep = _encode(tok, SEP)
    half = _room(tok, "next_speech", length, len(sep)) // 2
    out = []
    for p, play in enumerate(_split_plays(split, corpus_dir)):
        if max_examples is not None and len(out) >= max_examples:
            break  # a smoke-test budget: the first plays only
        sp = [s for s in speeches(play) if s.text]
        long = [s for s in sp if len(s.text) >= MIN_CHARS]
        for i, a in enumerate(sp[:-1]):
            b = sp[i + 1]
            if b.scene != a.scene or _name(b.speaker) == _name(a.speaker) or \
                    len(a.text) < MIN_CHARS:
                continue
            rng = np.random.default_rng([seed, _TAGS["next_speech"], p, i])
            label = int(rng.integers(2))
            if label == 0:  # a speech of another scene (first hit of a few draws)
                draws = (long[int(j)] for j in rng.integers(len(long), size=16))
                b = next((s for s in draws if s.scene != a.scene), None)
                if b is None:
                    continue
            ai, bi = _encode(tok, a.text)[-half:], _encode(tok, b.text)[:half]
            out.append(RepExample(_assemble(tok, "next_speech", [ai, sep, bi], length), label))
    return out[:max_examples]


# --- same-scene verification ------------------------------------------------------------------

def same_scene_examples(split: str, tok, *, length: int = 128, seed: int = 0,
                        corpus_dir=None, max_examples: Optional[int] = None) -> list:
    sep = _encode(tok, SEP)
    half = _room(tok, "same_scene", length, len(sep)) // 2
    plays = _split_plays(split, corpus_dir)
    long = [[s for s in speeches(play) if len(s.text) >= MIN_CHARS] for play in plays]
    out = []
    for p in range(len(plays)):
        if max_examples is not None and len(out) >= max_examples:
            break  # a smoke-test budget: the first plays only
        sp = long[p]
        for i, a in enumerate(sp):
            rng = np.random.default_rng([seed, _TAGS["same_scene"], p, i])
            label = int(rng.integers(2))
            if label:  # another speech of the scene, at least two away
                near = [s for j, s in enumerate(sp) if s.scene == a.scene and abs(j - i) >= 2]
                if not near:
                    continue
                b = near[int(rng.integers(len(near)))]
            else:       # a speech of another play
                q = int(rng.integers(len(plays) - 1))
                q += q >= p
                if not long[q]:
                    continue
                b = long[q][int(rng.integers(len(long[q])))]
            ai, bi = _encode(tok, a.text)[-half:], _encode(tok, b.text)[:half]
            out.append(RepExample(_assemble(tok, "same_scene", [ai, sep, bi], length), label))
    return out[:max_examples]


# --- masked-speaker attribution ----------------------------------------------------------------

def speaker_examples(split: str, tok, *, length: int = 128, seed: int = 0,
                     corpus_dir=None, max_examples: Optional[int] = None) -> list:
    out = []
    for p, play in enumerate(_split_plays(split, corpus_dir)):
        if max_examples is not None and len(out) >= max_examples:
            break  # a smoke-test budget: the first plays only
        sp = [s for s in speeches(play) if s.text]
        scene_names: dict = {}
        for s in sp:
            scene_names.setdefault(s.scene, {})[_name(s.speaker)] = s.speaker
        for i in range(1, len(sp) - 1):
            trio = sp[i - 1:i + 2]
            if len({s.scene for s in trio}) != 1:
                continue
            true = _name(trio[1].speaker)
            others = sorted(n for n in scene_names[trio[1].scene] if n != true)
            if not others:
                continue
            rng = np.random.default_rng([seed, _TAGS["speaker"], p, i])
            label = int(rng.integers(2))
            asked = trio[1].speaker if label else \
                scene_names[trio[1].scene][others[int(rng.integers(len(others)))]]
            question = _encode(tok, f"\nIs it {asked}?")
            heads = [_encode(tok, f"{s.speaker}: ") for s in (trio[0],)] + \
                [_encode(tok, f"\n{MASK_NAME}: "), _encode(tok, f"\n{trio[2].speaker}: ")]
            room = _room(tok, "speaker", length, len(question) + sum(len(h) for h in heads))
            third = room // 3
            if third < 4:
                continue  # names so long that the speeches would not fit
            bodies = [_encode(tok, trio[0].text)[-third:], _encode(tok, trio[1].text)[:third],
                      _encode(tok, trio[2].text)[:third]]
            parts = [x for h, b in zip(heads, bodies) for x in (h, b)] + [question]
            out.append(RepExample(_assemble(tok, "speaker", parts, length), label))
    return out[:max_examples]


# --- replaced-word detection -------------------------------------------------------------------

def word_frequencies(corpus_dir=None) -> tuple:
    """(words, cumulative probabilities) of the words (3+ letters) of the training plays;
    draw one with words[searchsorted(cdf, u)], u uniform in [0, 1)."""
    counts = Counter(w for play in _split_plays("train", corpus_dir)
                     for s in speeches(play) for w in _WORD.findall(s.text))
    words = sorted(counts)
    cdf = np.cumsum(np.array([counts[w] for w in words], dtype=np.float64))
    return words, cdf / cdf[-1]


def replaced_word_examples(split: str, tok, *, length: int = 128, seed: int = 0,
                           corpus_dir=None, vocabulary: Optional[tuple] = None,
                           max_examples: Optional[int] = None, count: int = 1,
                           task: str = "replaced_word") -> list:
    """replaced_word (count 1), or replaced_words (count REPLACED consecutive words)."""
    words, cdf = vocabulary if vocabulary is not None else word_frequencies(corpus_dir)
    room = _room(tok, task, length, 0)
    out = []
    for p, play in enumerate(_split_plays(split, corpus_dir)):
        if max_examples is not None and len(out) >= max_examples:
            break  # a smoke-test budget: the first plays only
        for i, s in enumerate(speeches(play)):
            text = s.text
            # keep the words that fit, with a margin of a few tokens per replacement
            # word that takes more tokens than the word it replaces
            text = tok.decode([int(t) for t in _encode(tok, text)[:room - 6 * count]])
            spans = [m.span() for m in _WORD.finditer(text)]
            if len(text) < MIN_CHARS or len(spans) < count + 2:
                continue
            rng = np.random.default_rng([seed, _TAGS[task], p, i])
            label, where = int(rng.integers(2)), -1
            if label:
                k = int(rng.integers(len(spans) - count + 1))
                new = []
                for a, b in spans[k:k + count]:
                    w = text[a:b]
                    while w.lower() == text[a:b].lower():
                        w = words[min(len(words) - 1, int(np.searchsorted(cdf, rng.random())))]
                    new.append(w)
                for (a, b), w in reversed(list(zip(spans[k:k + count], new))):
                    text = text[:a] + w + text[b:]
                where = min(2, 3 * (k + count // 2) // len(spans))
            ids = _encode(tok, text)
            if len(ids) > room:
                continue  # the replacement would be cut off: no visible evidence
            out.append(RepExample(_assemble(tok, task, [ids], length), label, where))
    return out[:max_examples]


REPLACED = 3  # consecutive words replaced in a positive replaced_words example


def replaced_words_examples(split: str, tok, **kw) -> list:
    return replaced_word_examples(split, tok, count=REPLACED, task="replaced_words", **kw)


# --- word-order detection ----------------------------------------------------------------------

SPAN = 10  # words shuffled in a positive word_order example (pilot 2b: 5 was not learnable)


def _shuffled(text: str, rng) -> Optional[tuple]:
    """(text with SPAN consecutive words in a new order, the index of the span's centre
    word, the number of words), or None when the speech has too few words, or too few
    distinct ones to reorder."""
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    n = len(spans)
    if n < SPAN:
        return None
    k = int(rng.integers(n - SPAN + 1))
    words = [text[a:b] for a, b in spans[k:k + SPAN]]
    for _ in range(8):  # a permutation that changes the words' order
        new = [words[j] for j in rng.permutation(SPAN)]
        if new != words:
            break
    else:
        return None  # e.g. "No, no, no, no, no"
    out, last = [], 0
    for (a, b), w in zip(spans[k:k + SPAN], new):  # the separators stay where they were
        out += [text[last:a], w]
        last = b
    return "".join(out) + text[last:], k + SPAN // 2, n


def word_order_examples(split: str, tok, *, length: int = 128, seed: int = 0,
                        corpus_dir=None, max_examples: Optional[int] = None) -> list:
    room = _room(tok, "word_order", length, 0)
    out = []
    for p, play in enumerate(_split_plays(split, corpus_dir)):
        if max_examples is not None and len(out) >= max_examples:
            break  # a smoke-test budget: the first plays only
        for i, s in enumerate(speeches(play)):
            # the words that fit, with a margin: a moved word can take a token more
            text = tok.decode([int(t) for t in _encode(tok, s.text)[:room - 4]])
            if len(text) < MIN_CHARS or len(text.split()) < SPAN + 1:
                continue
            rng = np.random.default_rng([seed, _TAGS["word_order"], p, i])
            label, where = int(rng.integers(2)), -1
            if label:
                changed = _shuffled(text, rng)
                if changed is None:
                    continue
                text, centre, n = changed
                where = min(2, 3 * centre // n)
            ids = _encode(tok, text)
            if len(ids) > room:
                continue
            out.append(RepExample(_assemble(tok, "word_order", [ids], length), label, where))
    return out[:max_examples]


def task_examples(task: str, split: str, tok, *, length: int = 128, seed: int = 0,
                  corpus_dir=None, **kw) -> list:
    """The examples of one representation task (TASKS) on one split."""
    build = {"next_speech": next_speech_examples, "speaker": speaker_examples,
             "replaced_word": replaced_word_examples, "word_order": word_order_examples,
             "same_scene": same_scene_examples, "replaced_words": replaced_words_examples}
    if task not in build:
        raise ValueError(f"task_examples: argument 'task': expected one of {TASKS}, "
                         f"got {task!r}")
    return build[task](split, tok, length=length, seed=seed, corpus_dir=corpus_dir, **kw)
