"""Fixed-shape batches from the corpus (or from a list of task examples), for both
architectures, deterministic for a seed and resumable from a saved position.

Batch dicts (the model API of mini_encdec/models):

    encoder-decoder (arch="encdec"), shapes (B, S) and (B, T):
        input_ids          encoder input, right-padded with pad_id
        attention_mask     1 on real encoder tokens, 0 on padding (int64)
        decoder_input_ids  [BOS] + targets[:-1], right-padded with pad_id
        labels             targets, -100 on padding
      with_teacher=True adds the decoder-only form of the same examples for distillation:
        teacher_input_ids       (B, S + T)  inputs ++ targets, padded
        teacher_attention_mask  (B, S + T)
        teacher_positions       (B, T) position of the teacher logits that predict
                                labels[:, j] (prefix_length + j - 1), -1 where labels
                                is -100; gather with teacher_logits[b, teacher_positions[b, j]]
    decoder-only (arch="decoder"), shape (B, L) with L = S + T:
        input_ids          x = inputs ++ targets, right-padded (x[:L])
        attention_mask     1 on real tokens
        labels             labels[:, t] = x[t + 1] where x[t + 1] is a target, else -100

Both forms come from the same Examples, so with the same seed the two architectures see
the same data. A causal-LM window of L + 1 tokens fills the L positions exactly.

Determinism and resuming: the corpus stream of N tokens is cut, per epoch e, into
windows of W tokens after a random offset, in a random order (both from the generator
seeded with (seed, 0, e)); example c of epoch e is made with its own generator seeded
(seed, 1, e, c). So an example depends only on (seed, epoch, cursor), and
`state_dict()` = {seed, epoch, cursor, ...} is all it takes to resume exactly.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..objectives.causal_lm import pack_documents
from ..objectives.example import Example
from ..objectives.objective import UL2
from ..validate import argument, check_int, check_number

IGNORE = -100  # label value the loss skips
ARCHS = ("encdec", "decoder")


@dataclass(frozen=True)
class DataConfig:
    """What the batches of a training run look like (the command line's data.* fields)."""

    # Examples per micro-batch.
    batch_size: int = 8
    # S: encoder length (decoder-only runs use sequences of S + T tokens).
    encoder_length: int = 64
    # T: decoder (target) length.
    decoder_length: int = 64
    # Validation batches evaluated at each evaluation.
    eval_batches: int = 8
    # Span corruption: noise density and mean span length.
    density: float = 0.15
    mean_span: float = 3.0
    # Synthetic finetuning tasks: number of training examples.
    num_examples: int = 2000

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in ("batch_size", "encoder_length", "decoder_length", "eval_batches",
                  "num_examples"):
            check_int(getattr(self, f), f"{name}.{f}", low=1)
        check_number(self.density, f"{name}.density", low=0, high=1, low_open=True,
                     high_open=True)
        check_number(self.mean_span, f"{name}.mean_span", low=1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- the tokenised corpus ---------------------------------------------------------------------

def corpus_stream(split: str, tokenizer, corpus_dir=None) -> np.ndarray:
    """The plays of a split tokenised and packed (play EOS play EOS ...), int64.
    Tokenising the whole corpus takes about a second; keep the array if you need it twice."""
    from .corpus import CORPUS_DIR, load_texts
    texts = load_texts(split, CORPUS_DIR if corpus_dir is None else corpus_dir)
    return pack_documents([tokenizer.encode(t) for t in texts], tokenizer.eos_id)


# --- collation ------------------------------------------------------------------------------

def _check_lengths(examples, s: Optional[int], t: Optional[int], fn: str) -> None:
    for k, ex in enumerate(examples):
        if s is not None and len(ex.inputs) > s:
            raise ValueError(f"{fn}: example {k} has {len(ex.inputs)} input tokens, more than "
                             f"encoder_length={s}")
        if t is not None and len(ex.targets) > t:
            raise ValueError(f"{fn}: example {k} has {len(ex.targets)} targets, more than "
                             f"decoder_length={t}")
        if len(ex.targets) == 0:
            raise ValueError(f"{fn}: example {k} has no targets")


def collate_encdec(examples: Sequence[Example], encoder_length: int, decoder_length: int, *,
                   pad_id: int = 0, bos_id: int = 2, with_teacher: bool = False) -> dict:
    """Encoder-decoder batch (see the module docstring) from a list of Examples."""
    _check_lengths(examples, encoder_length, decoder_length, "collate_encdec")
    b, s, t = len(examples), encoder_length, decoder_length
    input_ids = np.full((b, s), pad_id, dtype=np.int64)
    attention_mask = np.zeros((b, s), dtype=np.int64)
    decoder_input_ids = np.full((b, t), pad_id, dtype=np.int64)
    labels = np.full((b, t), IGNORE, dtype=np.int64)
    for i, ex in enumerate(examples):
        p, n = len(ex.inputs), len(ex.targets)
        input_ids[i, :p] = ex.inputs
        attention_mask[i, :p] = 1
        decoder_input_ids[i, 0] = bos_id                # shifted right with BOS
        decoder_input_ids[i, 1:n] = ex.targets[:-1]
        labels[i, :n] = ex.targets
    batch = dict(input_ids=input_ids, attention_mask=attention_mask,
                 decoder_input_ids=decoder_input_ids, labels=labels)
    if with_teacher:
        batch.update(teacher_fields(examples, s, t, pad_id=pad_id))
    return batch


def teacher_fields(examples: Sequence[Example], encoder_length: int, decoder_length: int, *,
                   pad_id: int = 0) -> dict:
    """The decoder-only form of encoder-decoder examples, for a distillation teacher:
    teacher_input_ids and teacher_attention_mask (B, S + T), teacher_positions (B, T)
    (see the module docstring)."""
    t = decoder_length
    teacher = collate_decoder(examples, encoder_length + t, pad_id=pad_id)
    positions = np.full((len(examples), t), -1, dtype=np.int64)
    for i, ex in enumerate(examples):
        if len(ex.inputs) < 1:
            raise ValueError(f"collate_encdec: example {i} has no inputs; the teacher "
                             f"needs a token before the first target")
        n = len(ex.targets)
        positions[i, :n] = len(ex.inputs) - 1 + np.arange(n)  # prefix_length + j - 1
    return dict(teacher_input_ids=teacher["input_ids"],
                teacher_attention_mask=teacher["attention_mask"], teacher_positions=positions)


def collate_decoder(examples: Sequence[Example], length: int, *, pad_id: int = 0) -> dict:
    """Decoder-only batch of length L: x = inputs ++ targets (len(x) <= L + 1).

    Returns int64 arrays of shape (batch, L): input_ids = x[:L] right-padded with pad_id;
    attention_mask 1 on every real token of x[:L] (inputs and targets), 0 on padding;
    labels[t] = x[t + 1] where x[t + 1] is a target (t from len(inputs) - 1 to
    len(x) - 2), -100 elsewhere. When the window is full (len(x) == L + 1) x[L] is not an
    input but is still the label of the last position: every target is predicted once."""
    b = len(examples)
    input_ids = np.full((b, length), pad_id, dtype=np.int64)
    attention_mask = np.zeros((b, length), dtype=np.int64)
    labels = np.full((b, length), IGNORE, dtype=np.int64)
    for i, ex in enumerate(examples):
        x = np.concatenate([ex.inputs, ex.targets])
        if len(x) > length + 1 or len(ex.targets) == 0:
            raise ValueError(f"collate_decoder: example {i} has {len(x)} tokens "
                             f"({len(ex.targets)} targets); expected at most length + 1 = "
                             f"{length + 1} and at least one target")
        m = min(len(x), length)
        input_ids[i, :m] = x[:m]
        attention_mask[i, :m] = 1
        # position t predicts x[t + 1]; loss only on targets: t + 1 >= len(inputs)
        first = max(len(ex.inputs) - 1, 0)
        last = len(x) - 1              # exclusive: x[len(x) - 1] predicts nothing
        labels[i, first:last] = x[first + 1:last + 1]
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def split_teacher(batch: dict) -> tuple:
    """(student batch, teacher decoder-only batch, teacher_positions) of a with_teacher
    encoder-decoder batch."""
    student = {k: v for k, v in batch.items() if not k.startswith("teacher_")}
    teacher = dict(input_ids=batch["teacher_input_ids"],
                   attention_mask=batch["teacher_attention_mask"])
    return student, teacher, batch["teacher_positions"]


# --- resumable batch streams -------------------------------------------------------------------

def _check_int(v, name: str, fn: str, lo: int) -> int:
    return check_int(v, argument(fn, name), low=lo, numpy=True)


class _Positioned(abc.ABC):
    """Epoch/cursor bookkeeping, collation and state shared by the batchers."""

    kind = ""

    def __init__(self, *, batch_size, encoder_length, decoder_length, arch, seed, pad_id,
                 bos_id, with_teacher):
        fn = type(self).__name__
        self.batch_size = _check_int(batch_size, "batch_size", fn, 1)
        self.encoder_length = _check_int(encoder_length, "encoder_length", fn, 1)
        self.decoder_length = _check_int(decoder_length, "decoder_length", fn, 1)
        self.seed = _check_int(seed, "seed", fn, 0)
        if arch not in ARCHS:
            raise ValueError(f"{fn}: argument 'arch': expected one of {ARCHS}, got {arch!r}")
        if with_teacher and arch != "encdec":
            raise ValueError(f"{fn}: argument 'with_teacher': only for arch='encdec'")
        self.arch, self.pad_id, self.bos_id = arch, pad_id, bos_id
        self.with_teacher = with_teacher
        self.epoch, self.cursor = 0, 0
        self._order_cache: tuple = (-1, None)

    @abc.abstractmethod
    def _epoch_size(self, epoch: int) -> int:
        """Number of examples in epoch `epoch` (defined by each batcher)."""

    @abc.abstractmethod
    def _example(self, epoch: int, cursor: int) -> Example:
        """Example `cursor` of epoch `epoch`'s order (defined by each batcher)."""

    def _identity(self) -> dict:
        """What must match for a saved state to be valid."""
        return dict(kind=self.kind, batch_size=self.batch_size,
                    encoder_length=self.encoder_length, decoder_length=self.decoder_length,
                    arch=self.arch)

    def collate(self, examples: Sequence[Example]) -> dict:
        if self.arch == "decoder":
            return collate_decoder(examples, self.encoder_length + self.decoder_length,
                                   pad_id=self.pad_id)
        return collate_encdec(examples, self.encoder_length, self.decoder_length,
                              pad_id=self.pad_id, bos_id=self.bos_id,
                              with_teacher=self.with_teacher)

    def next_examples(self) -> list:
        out = []
        while len(out) < self.batch_size:
            if self.cursor >= self._epoch_size(self.epoch):
                self.epoch, self.cursor = self.epoch + 1, 0
                continue
            out.append(self._example(self.epoch, self.cursor))
            self.cursor += 1
        return out

    def next_batch(self) -> dict:
        return self.collate(self.next_examples())

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """A small JSON-serialisable dict: the position plus what it is valid for."""
        return dict(self._identity(), seed=self.seed, epoch=self.epoch, cursor=self.cursor)

    def load_state_dict(self, state: dict) -> None:
        fn = f"{type(self).__name__}.load_state_dict"
        for k, v in self._identity().items():
            if state.get(k) != v:
                raise ValueError(f"{fn}: state was saved with {k}={state.get(k)!r}, this "
                                 f"batcher has {k}={v!r}")
        self.seed = _check_int(state.get("seed"), "state['seed']", fn, 0)
        self.epoch = _check_int(state.get("epoch"), "state['epoch']", fn, 0)
        self.cursor = _check_int(state.get("cursor"), "state['cursor']", fn, 0)

    def _rng(self, *words: int) -> np.random.Generator:
        # distinct leading tags: SeedSequence pads entropy with zeros, so (s, e) and
        # (s, e, 0) would otherwise collide
        return np.random.default_rng([self.seed, *words])


class Batcher(_Positioned):
    """Pre-training batches: windows of a token stream through an objective.

        b = Batcher(stream, objective, batch_size=8, encoder_length=128,
                    decoder_length=128, arch="encdec", seed=0)
        batch = b.next_batch(); state = b.state_dict(); ...; b.load_state_dict(state)
    """

    kind = "stream"

    def __init__(self, stream, objective, *, batch_size: int, encoder_length: int,
                 decoder_length: int, arch: str = "encdec", seed: int = 0, pad_id: int = 0,
                 bos_id: int = 2, with_teacher: bool = False):
        super().__init__(batch_size=batch_size, encoder_length=encoder_length,
                         decoder_length=decoder_length, arch=arch, seed=seed, pad_id=pad_id,
                         bos_id=bos_id, with_teacher=with_teacher)
        if getattr(objective, "decoder_only", False) and arch != "decoder":
            raise ValueError(f"Batcher: objective {objective.name} is decoder-only; use "
                             f"arch='decoder'")
        if isinstance(objective, UL2):
            objective = objective.with_lengths(encoder_length, decoder_length)
        self.objective = objective
        self.stream = np.asarray(stream)
        self.window = objective.window_length(encoder_length, decoder_length)
        if len(self.stream) < 2 * self.window:
            raise ValueError(f"Batcher: argument 'stream': expected at least {2 * self.window} "
                             f"tokens (two windows of {self.window}), got {len(self.stream)}")

    def _identity(self) -> dict:
        return dict(super()._identity(), objective=self.objective.name,
                    stream_length=int(len(self.stream)), window=self.window)

    def _layout(self, epoch: int) -> tuple:
        """(offset, order) of an epoch: windows start at offset + order[c] * W."""
        if self._order_cache[0] != epoch:
            rng = self._rng(0, epoch)
            offset = int(rng.integers(0, self.window))
            order = rng.permutation((len(self.stream) - offset) // self.window)
            self._order_cache = (epoch, (offset, order))
        return self._order_cache[1]

    def _epoch_size(self, epoch: int) -> int:
        return len(self._layout(epoch)[1])

    def window_at(self, epoch: int, cursor: int) -> np.ndarray:
        offset, order = self._layout(epoch)
        start = offset + int(order[cursor]) * self.window
        return self.stream[start:start + self.window]

    def _example(self, epoch: int, cursor: int) -> Example:
        return self.objective.example(self.window_at(epoch, cursor), self._rng(1, epoch, cursor))


class ExampleBatcher(_Positioned):
    """Batches from a fixed list of Examples (downstream tasks), reshuffled every epoch
    (shuffle=False keeps the list order, for evaluation)."""

    kind = "examples"

    def __init__(self, examples: Sequence[Example], *, batch_size: int, encoder_length: int,
                 decoder_length: int, arch: str = "encdec", seed: int = 0, pad_id: int = 0,
                 bos_id: int = 2, shuffle: bool = True):
        super().__init__(batch_size=batch_size, encoder_length=encoder_length,
                         decoder_length=decoder_length, arch=arch, seed=seed, pad_id=pad_id,
                         bos_id=bos_id, with_teacher=False)
        if not examples:
            raise ValueError("ExampleBatcher: argument 'examples': expected a non-empty list")
        _check_lengths(examples, encoder_length, decoder_length, "ExampleBatcher")
        self.examples, self.shuffle = list(examples), shuffle

    def _identity(self) -> dict:
        return dict(super()._identity(), num_examples=len(self.examples), shuffle=self.shuffle)

    def _epoch_size(self, epoch: int) -> int:
        return len(self.examples)

    def _example(self, epoch: int, cursor: int) -> Example:
        if self._order_cache[0] != epoch:
            order = (self._rng(0, epoch).permutation(len(self.examples)) if self.shuffle
                     else np.arange(len(self.examples)))
            self._order_cache = (epoch, order)
        return self.examples[int(self._order_cache[1][cursor])]


def eval_batches(stream, objective, *, batch_size: int, encoder_length: int,
                 decoder_length: int, arch: str = "encdec", seed: int = 0,
                 max_batches: Optional[int] = None, pad_id: int = 0, bos_id: int = 2,
                 with_teacher: bool = False) -> list:
    """A fixed evaluation set: consecutive windows of the stream from its start, in order,
    each corrupted with the generator seeded (seed, 2, index); the last partial batch is
    dropped. The same arguments always give the same batches."""
    b = Batcher(stream, objective, batch_size=batch_size, encoder_length=encoder_length,
                decoder_length=decoder_length, arch=arch, seed=seed, pad_id=pad_id,
                bos_id=bos_id, with_teacher=with_teacher)
    n = len(b.stream) // b.window // batch_size
    if max_batches is not None:
        n = min(n, max_batches)
    out = []
    for k in range(n):
        exs = [b.objective.example(b.stream[i * b.window:(i + 1) * b.window], b._rng(2, i))
               for i in range(k * batch_size, (k + 1) * batch_size)]
        out.append(b.collate(exs))
    return out


def make_batcher(split: str, objective, tokenizer, **kwargs) -> Batcher:
    """A Batcher over a corpus split: make_batcher("train", make_objective("ul2", tok), tok,
    batch_size=8, encoder_length=128, decoder_length=128, arch="encdec", seed=0)."""
    kwargs.setdefault("pad_id", tokenizer.pad_id)
    kwargs.setdefault("bos_id", tokenizer.bos_id)
    return Batcher(corpus_stream(split, tokenizer), objective, **kwargs)
