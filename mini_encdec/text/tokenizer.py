"""SentencePiece tokenizer: training on the corpus, loading, special pieces.

Ids follow the Gemma convention (SPEC.md section 5): pad 0, eos 1, bos 2, unk 3. Then come
user-defined pieces, each always a single id:

    "\\n"                                  newline (lines are encoded one at a time, so the
                                          first word of a line gets its usual "▁word" piece)
    [NLU] [NLG] [S2S]                     UL2 mode tokens
    <extra_id_0> ... <extra_id_{n-1}>     sentinels for span corruption

How many sentinels: span corruption with encoder length S gives inputs
`K1 <s0> K2 <s1> ... Kn <s(n-1)> EOS` where every kept span Ki has at least one token,
so n spans need at least 2n + 1 input tokens: n <= (S - 1) // 2. With S = 512, the
longest configured length, at most 255 spans fit whatever the rate and mean span, so
256 sentinels are enough for every denoiser (the densest preset task, rate 0.5 with
mean span 3, uses 127 at S = 512; see objectives.span_corruption.max_spans).

Byte fallback is on, so any text round-trips exactly: `decode(encode(s)) == s`.

Retrain (deterministic: one thread, no sampling or shuffling of sentences; --overwrite
because the shipped model is already there, replaced only once the new one is complete):
    python -m mini_encdec tokenizer train --overwrite [--vocab-size 8192] [--out data/tokenizer.model]
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from .corpus import DATA_DIR, load_texts
from ..validate import argument, check_int

DEFAULT_MODEL = DATA_DIR / "tokenizer.model"
TRAIN_COMMAND = "python -m mini_encdec tokenizer train"

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
NEWLINE = "\n"
MODE_TOKENS = ("[NLU]", "[NLG]", "[S2S]")
NUM_SENTINELS = 256


def sentinel_piece(i: int) -> str:
    """The i-th sentinel piece, `<extra_id_i>`."""
    return f"<extra_id_{i}>"


class Tokenizer:
    """A loaded SentencePiece model plus the ids of the special pieces.

    encode(text) -> np.ndarray of int32 ids (no BOS/EOS added); decode(ids) -> str.
    """

    def __init__(self, model_proto: bytes, path: Optional[Path] = None):
        import sentencepiece as spm

        self.path = path
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = int(self.sp.get_piece_size())
        self.pad_id, self.eos_id, self.bos_id, self.unk_id = PAD_ID, EOS_ID, BOS_ID, UNK_ID
        got = (self.sp.pad_id(), self.sp.eos_id(), self.sp.bos_id(), self.sp.unk_id())
        if got != (PAD_ID, EOS_ID, BOS_ID, UNK_ID):
            raise ValueError(f"tokenizer {str(path)!r}: expected pad/eos/bos/unk ids "
                             f"(0, 1, 2, 3), got {got}; retrain with `{TRAIN_COMMAND}`")
        self.newline_id = self._single(NEWLINE)
        self.mode_ids = {m: self._single(m) for m in MODE_TOKENS}
        ids = []
        while self.sp.piece_to_id(sentinel_piece(len(ids))) != self.unk_id:
            ids.append(self.sp.piece_to_id(sentinel_piece(len(ids))))
        # sentinel_ids[i] is the id of <extra_id_i>
        self.sentinel_ids = np.asarray(ids, dtype=np.int32)

    def _single(self, piece: str) -> int:
        i = self.sp.piece_to_id(piece)
        if i == self.unk_id:
            raise ValueError(f"tokenizer {str(self.path)!r}: piece {piece!r} is missing; "
                             f"retrain with `{TRAIN_COMMAND}`")
        return int(i)

    @property
    def num_sentinels(self) -> int:
        return len(self.sentinel_ids)

    @property
    def special_ids(self) -> np.ndarray:
        """Every id that is not ordinary text: pad/eos/bos/unk, mode tokens, sentinels."""
        return np.concatenate([[PAD_ID, EOS_ID, BOS_ID, UNK_ID],
                               list(self.mode_ids.values()), self.sentinel_ids]).astype(np.int32)

    def encode(self, text: str) -> np.ndarray:
        """Text -> int32 ids. Lines are encoded separately and joined by the newline id."""
        if not isinstance(text, str):
            raise ValueError(f"Tokenizer.encode: argument 'text': expected a str, got "
                             f"{type(text).__name__}")
        pieces = self.sp.encode(text.split(NEWLINE))
        out = []
        for k, line_ids in enumerate(pieces):
            if k:
                out.append(self.newline_id)
            out.extend(line_ids)
        return np.asarray(out, dtype=np.int32)

    def decode(self, ids: Union[Sequence[int], np.ndarray]) -> str:
        """Ids -> text (pad, eos and bos decode to nothing)."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"Tokenizer.decode: argument 'ids': expected ids in "
                             f"[0, {self.vocab_size}), got {bad[0]}")
        lines, cur = [], []
        for i in ids:
            if i == self.newline_id:
                lines.append(cur)
                cur = []
            else:
                cur.append(i)
        lines.append(cur)
        return NEWLINE.join(self.sp.decode(l) for l in lines)

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def piece_to_id(self, piece: str) -> int:
        return int(self.sp.piece_to_id(piece))

    def fingerprint(self) -> str:
        """sha256 of the model file (cache key for tokenised corpora)."""
        return hashlib.sha256(self.model_proto).hexdigest()


def _model_error(path: Path, problem: str) -> ValueError:
    return ValueError(f"tokenizer model {str(path)!r} {problem}; expected a model made by "
                      f"`{TRAIN_COMMAND}` (the shipped one is {DEFAULT_MODEL})")


def load_tokenizer(path: Union[str, Path, None] = None) -> Tokenizer:
    """Load a trained model (default: the shipped data/tokenizer.model)."""
    path = Path(DEFAULT_MODEL if path is None else path)
    if not path.is_file():
        raise _model_error(path, "is a directory" if path.is_dir() else "not found")
    proto = path.read_bytes()
    try:
        return Tokenizer(proto, path)
    except ValueError:
        raise
    except Exception:  # sentencepiece raises RuntimeError/OSError on bad bytes
        raise _model_error(path, "is not a valid SentencePiece model (its bytes do not "
                                 "parse as one)") from None


def training_sentences(texts: Iterable[str]) -> list:
    """The SentencePiece training input: every non-empty line of every text, in order."""
    return [l for t in texts for l in t.split(NEWLINE) if l]


def min_vocab_size(num_sentinels: int) -> int:
    """The smallest vocabulary that holds the 4 special ids, the 256 byte pieces, the user
    pieces (newline, 3 mode tokens, the sentinels) and some text (16 pieces)."""
    return 4 + 256 + 1 + len(MODE_TOKENS) + num_sentinels + 16


def check_training_sizes(vocab_size: int, num_sentinels: int) -> None:
    """ValueError unless a model of `vocab_size` pieces can hold the special, byte and
    user pieces with `num_sentinels` sentinels, and some text."""
    check_int(num_sentinels, argument("train_tokenizer", "num_sentinels"), low=1)
    n_user = 1 + len(MODE_TOKENS) + num_sentinels
    if not isinstance(vocab_size, int) or vocab_size < min_vocab_size(num_sentinels):
        raise ValueError(f"train_tokenizer: argument 'vocab_size': expected an int >= "
                         f"{min_vocab_size(num_sentinels)} (4 special, 256 byte pieces, "
                         f"{n_user} user pieces, some text), got {vocab_size!r}")


def train_tokenizer(out_path: Union[str, Path, None] = None, vocab_size: int = 8192, *,
                    num_sentinels: int = NUM_SENTINELS, texts: Optional[Iterable[str]] = None,
                    model_type: str = "bpe", overwrite: bool = False,
                    what: Optional[str] = None) -> Tokenizer:
    """Train the SentencePiece model on the training split (or `texts`), write it to
    out_path (default data/tokenizer.model) and return it. Deterministic: the same
    texts and settings give the same model file byte for byte.

    An existing out_path is refused (safe_output.OutputError) unless overwrite=True; the
    file is written beside it and renamed into place when complete.
    """
    import io

    import sentencepiece as spm

    from ..storage.safe_output import check_output, new_output_file

    check_training_sizes(vocab_size, num_sentinels)
    out_path = Path(DEFAULT_MODEL if out_path is None else out_path)
    what = what or "train_tokenizer: argument 'out_path'"  # the CLI names its --out
    check_output(out_path, overwrite=overwrite, what=what, kind="file")  # before training
    sentences = training_sentences(load_texts("train") if texts is None else texts)
    user = [NEWLINE, *MODE_TOKENS, *(sentinel_piece(i) for i in range(num_sentinels))]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=buf,
        vocab_size=vocab_size, model_type=model_type,
        pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID,
        user_defined_symbols=user,
        # exact round trips: no normalisation, keep every space, bytes for unseen chars
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        byte_fallback=True, character_coverage=1.0, split_digits=True,
        allow_whitespace_only_pieces=True,
        # determinism: every sentence, in order, one thread
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=1,
        max_sentence_length=16384, minloglevel=2)
    proto = buf.getvalue()
    tok = Tokenizer(proto, out_path)  # checks the special ids before anything is written
    with new_output_file(out_path, overwrite=overwrite, what=what) as tmp:
        tmp.write_bytes(proto)
    return tok


def summary(tok, path, trained: bool = False) -> str:
    """What `tokenizer train` / `tokenizer info` print about a model file."""
    head = f"{'wrote ' if trained else ''}{path}: {tok.vocab_size} pieces, sha256 {tok.fingerprint()}"
    if trained:
        return head
    return (f"{head}\npad {tok.pad_id} eos {tok.eos_id} bos {tok.bos_id} unk {tok.unk_id} "
            f"newline {tok.newline_id} modes {tok.mode_ids} sentinels {tok.num_sentinels} "
            f"(<extra_id_0> = {int(tok.sentinel_ids[0])})")
