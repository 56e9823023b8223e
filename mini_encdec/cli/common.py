"""What several commands share: argument types with the expected range in their message,
the --backend and --quiet options, loading the inputs a command names (model, tokenizer,
corpus, task examples) with errors that name the option, and the checks that need the
model (memory, trainable parameters, vocabulary).

Every mistake is a UsageError (usage.py) whose message names the option, the value given
and what was expected; cli.main prints it as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Optional

from ..config import EncDecConfig
from ..nn.output_loss import BLOCK_ROWS
from ..text.batching import DataConfig
from ..text.tasks import SYNTHETIC_TASKS
from ..training.optim import OptimConfig
from ..usage import UsageError
from ..validate import check_int, check_number, describe_int, describe_number

TASKS = ("reply", *SYNTHETIC_TASKS)


# --- argument types: numbers checked by argparse, with the expected range in the message ----------

def _number_type(convert, expected: str, check):
    """An argparse type: `convert(text)` (int or float), then `check(value)`; the error
    says what was expected and what was given."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        try:
            return check(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}") from None
    parse.__name__ = expected
    return parse


def int_at_least(low: int, high: Optional[int] = None):
    """An argparse type: an integer >= low (and <= high when given)."""
    return _number_type(int, describe_int(low, high),
                        lambda v: check_int(v, "", low=low, high=high))


def float_in(low: float, high: float = math.inf, *, low_open: bool = True):
    """An argparse type: a finite number in (low, high] (or [low, high] with
    low_open=False)."""
    bounds = dict(low=low, high=high, low_open=low_open, high_open=not math.isfinite(high))
    return _number_type(float, describe_number(**bounds),
                        lambda v: check_number(v, "", **bounds))


POSITIVE = int_at_least(1)
SEED = int_at_least(0)


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """--backend and --quiet, which every model command has."""
    p.add_argument("--backend", choices=("numpy", "numba"), default=None,
                   help="compute backend (default: $MINI_ENCDEC_BACKEND or numba)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages")


# --- messages -------------------------------------------------------------------------------------

def first_line(text: str) -> str:
    """A message as one line (tabs and newlines of wrapped library messages folded)."""
    return " ".join(str(text).split()) or "(no message)"


def without_path(message: str, path) -> str:
    """`message` without a leading "<path>: " (when the caller names the path already)."""
    head = f"{path}: "
    return message[len(head):] if message.startswith(head) else message


# --- the outputs a command writes ----------------------------------------------------------------

def hold_output(args, path, what: str, kind: str = "directory") -> None:
    """Lock a command's output now, for the rest of the command (storage.lock): a second
    writer of the same path, or a --resume of a run still going, is refused at once. A path
    that cannot be written at all is refused first, with safe_output's message."""
    from ..storage.lock import hold
    from ..storage.safe_output import check_output
    locks = getattr(args, "locks", None)
    if locks is not None and path is not None:
        check_output(path, overwrite=True, what=what, kind=kind)
        locks.enter_context(hold(path, what))


# --- the inputs a command names -------------------------------------------------------------------

def set_backend(name: Optional[str]) -> None:
    """Select the backend (None: $MINI_ENCDEC_BACKEND or numba). For numba the kernels are
    imported now, so a missing Numba or a bad MINI_ENCDEC_THREADS / MINI_ENCDEC_MALLOC is
    a one-line error before any work starts."""
    from .. import ops
    from ..backend import get_backend, set_backend as set_global_backend
    if name:
        set_global_backend(name)
    if get_backend() == "numba":
        try:
            ops.twins()
        except (ImportError, ValueError) as e:
            raise UsageError(str(e)) from None


def read_tokenizer(path: Optional[str], what: str = "--tokenizer"):
    """The SentencePiece model at `path` (None: the shipped one); errors name `what`."""
    from ..text.tokenizer import DEFAULT_MODEL, load_tokenizer
    try:
        return load_tokenizer(path)
    except ValueError as e:
        raise UsageError(f"{what} {path if path is not None else DEFAULT_MODEL}: {e}") \
            from None


def tok_default() -> str:
    """The shipped tokenizer's path, as messages name it."""
    from ..text.tokenizer import DEFAULT_MODEL
    return str(DEFAULT_MODEL)


def read_model(path: str, what: str = "--checkpoint"):
    """The model in a model directory, checkpoint or run directory; errors name `what`."""
    from ..storage.checkpoint import load_model
    try:
        model = load_model(path)
    except ValueError as e:  # CheckpointError names the file
        raise UsageError(f"{what} {path}: {without_path(str(e), path)}") from None
    _note_unfinished_run(Path(path), what)
    return model


def _note_unfinished_run(path: Path, what: str) -> None:
    """One line when `path` is a run directory whose latest checkpoint is not its last step
    (a run still training, or interrupted): which checkpoint was read, and its step."""
    from ..storage.checkpoint import resolve_checkpoint
    try:
        used = resolve_checkpoint(path)
        planned = json.loads((path / "run_config.json").read_text())["train"]["steps"]
        step = int(used.name.split("_")[-1])
    except (ValueError, OSError, KeyError, TypeError, RecursionError):
        return
    if used != path and isinstance(planned, int) and step < planned:
        print(f"{what} {path}: the run is at step {step} of {planned} (still training, or "
              f"interrupted); using its checkpoint {used.name}", file=sys.stderr)


_STREAMS: dict = {}


def corpus_split(split: str, tok):
    """The tokenised corpus split (memoised per process: tokenising takes a second)."""
    key = (split, tok.fingerprint())
    if key not in _STREAMS:
        from ..text.batching import corpus_stream
        _STREAMS[key] = corpus_stream(split, tok)
    return _STREAMS[key]


def task_examples(task: str, split: str, data: DataConfig, tok, seed: int) -> list:
    """The examples of a task's split that fit the data.* lengths (UsageError if not)."""
    from ..text import tasks
    if task == "reply":
        return tasks.reply_examples(split, tok, encoder_length=data.encoder_length,
                                    decoder_length=data.decoder_length)
    n = data.num_examples if split == "train" else max(64, data.batch_size * data.eval_batches)
    offset = {"train": 0, "validation": 1, "test": 2}[split]
    exs = tasks.synthetic_examples(task, n, seed=seed * 3 + offset)
    too_long = [e for e in exs if len(e.inputs) > data.encoder_length
                or len(e.targets) > data.decoder_length]
    if too_long:
        raise UsageError(f"task {task}: examples need encoder_length >= "
                         f"{max(len(e.inputs) for e in exs)} and decoder_length >= "
                         f"{max(len(e.targets) for e in exs)} (--set data.encoder_length=...)")
    return exs


def arch_of(config) -> str:
    return "encdec" if isinstance(config, EncDecConfig) else "decoder"


def checked(what: str, build):
    """build(), with a ValueError or TypeError turned into "invalid <what>: ..."."""
    try:
        return build()
    except (ValueError, TypeError) as e:
        raise UsageError(f"invalid {what}: {e}") from None


# --- checks that need the model: memory, trainable parameters, vocabulary -------------------------

def available_memory() -> Optional[int]:
    """Bytes of memory available now (Linux MemAvailable, else physical), None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


# bytes of a training step's working set per unit of each term, fitted to the peak resident
# memory of one step (tests/test_faults.py checks the estimate within 1.5x of it)
_WORKING_SET = {
    # one block of logits (the output layer and its loss go a block of rows at a time,
    # nn/output_loss.py, and keep about 6 block-sized arrays), cached activations and
    # their gradients, and every layer's attention scores and probabilities
    "numpy": dict(logits=6.0, activations=2.0, attention=0.75, fixed=0),
    # the fused loss and attention kernels keep far less; Numba's compiler adds ~130 MB
    "numba": dict(logits=2.0, activations=1.0, attention=0.05, fixed=130 * 2**20),
}


def training_memory(config, arch: str, batch_size: int, encoder_length: int,
                    decoder_length: int, backend: str = "numba") -> int:
    """Bytes one training step needs beyond the model, roughly (see _WORKING_SET): one
    block of the (B, T, V) logits (at most BLOCK_ROWS rows of V), the cached activations
    of every layer, the (B, H, L, L) attention arrays and masks, and the parameters with
    their gradients and AdamW moments."""
    B, S, T = batch_size, encoder_length, decoder_length
    f = 4  # float32
    if arch == "decoder":
        parts = [(config, S + T, 12, False)]
        targets, vocab = S + T, config.vocab_size
    else:
        parts = [(config.encoder, S, 12, False), (config.decoder, T, 16, True)]
        targets, vocab = T, config.decoder.vocab_size
    logits = min(B * targets, BLOCK_ROWS) * vocab * f
    activations = attention = params = 0
    for c, L, widths, cross in parts:
        per_layer = B * L * (widths * c.hidden_size + 4 * c.intermediate_size) * f
        activations += c.num_hidden_layers * per_layer
        keys = L + (S if cross else 0)
        attention += c.num_hidden_layers * (B * c.num_attention_heads * L * keys * f * 2
                                            + B * L * keys * 8)
        params += c.num_hidden_layers * (4 * c.hidden_size * c.num_attention_heads * c.head_dim
                                         + 3 * c.hidden_size * c.intermediate_size)
    params += vocab * parts[0][0].hidden_size
    k = _WORKING_SET.get(backend, _WORKING_SET["numpy"])
    return int(k["logits"] * logits + k["activations"] * activations
               + k["attention"] * attention + 4 * params * f + k["fixed"])


def check_memory(data: DataConfig, config, arch: str) -> None:
    """Refuse a batch and lengths whose training step cannot fit in the memory available
    now (training_memory's estimate, which follows the backend in use)."""
    from ..backend import get_backend
    S, T = data.encoder_length, data.decoder_length
    refuse_beyond_memory(training_memory(config, arch, data.batch_size, S, T, get_backend()),
                         f"--set batch_size={data.batch_size} encoder_length={S} "
                         f"decoder_length={T}: a training step needs",
                         "shorter lengths or a smaller batch_size")


def refuse_beyond_memory(need: int, what: str, expected: str) -> None:
    """UsageError "<what> about N GiB, more than the M GiB available; expected <expected>"
    when `need` bytes exceed the memory available now (nothing if that is unknown)."""
    avail = available_memory()
    if avail is not None and need > avail:
        raise UsageError(f"{what} about {need / 2**30:.1f} GiB, more than the "
                         f"{avail / 2**30:.1f} GiB available; expected {expected}")


def check_trainable(model, optim: OptimConfig) -> None:
    """Every freeze pattern must match a parameter, and something must still train."""
    from ..training.optim import trainable_names
    names = list(model.params)
    for pattern in optim.freeze:
        if not any(re.search(pattern, n) for n in names):
            raise UsageError(f"--set optim.freeze={','.join(optim.freeze)}: pattern "
                             f"{pattern!r} matches no parameter; expected regular expressions "
                             f"found in names such as {names[1]!r}")
    warmup = model.config.cross_attn_warmup_steps if isinstance(model.config, EncDecConfig) \
        else 0
    try:
        trainable_names(names, 0, freeze=optim.freeze, warmup_steps=warmup)
    except ValueError as e:
        raise UsageError(f"--set optim.freeze: {e}") from None


def check_vocabulary(model, tok, what: str, exact: bool = True) -> None:
    """The model's vocabulary must be the data's (tok None: the synthetic tasks'): a
    trained model with more ids than the tokenizer writes ids it cannot decode, one with
    fewer cannot read the data. exact=False (a fresh model): only too few is refused."""
    from ..text.tasks import SYNTH_VOCAB_SIZE
    need = tok.vocab_size if tok is not None else SYNTH_VOCAB_SIZE
    have = model.config.vocab_size
    if have < need or (exact and have != need):
        source = "the tokenizer's" if tok is not None else "the synthetic tasks'"
        size = "smaller than" if have < need else "larger than"
        raise UsageError(f"{what}: the model's vocabulary ({have} ids) is {size} "
                         f"{source} ({need}): this model was trained with another "
                         f"tokenizer; expected the one it was trained with")


def decode_text(data: bytes, what: str, expected: str) -> str:
    """`data` as strict UTF-8 text without NUL bytes, whatever the locale; otherwise a
    UsageError naming `what`, the offending byte and its 0-based offset."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{what}: not valid UTF-8 text (byte 0x{data[e.start]:02x} at "
                         f"offset {e.start}); expected {expected}") from None
    if "\0" in text:
        raise UsageError(f"{what}: holds a NUL byte (binary input?); expected {expected}")
    return text
