"""Tests for audiocap_jax.ontology: the original keyword-caption rule on the real AudioSet ontology."""

import json

import pytest

from audiocap_jax.ontology import Ontology


@pytest.fixture(scope="module")
def ontology() -> Ontology:
    return Ontology.load()


def test_packaged_ontology(ontology):
    assert len(ontology) == 632
    assert ontology.source.endswith("audiocap_jax/assets/audioset_ontology.json")
    assert ontology.name("/m/03wvsk") == "Hair dryer"
    assert ontology.parents("/m/0ghcn6") == ("/m/0bt9lr", "/m/01yrx", "/m/0cdnk", "/m/01z5f")  # Growling.
    assert ontology.parents("/m/04rlf") == ()  # Music is a root.


@pytest.mark.parametrize(
    ("labels", "keywords"),
    [
        (["/m/07bjf", "/m/0dv5r"], "camera, single-lens reflex camera, mechanisms"),
        (["/m/03wvsk"], "domestic sounds - home sounds, hair dryer"),
        # Rows of audioset_small/valid.jsonl (youtube ids -0cQIISoa0I, -Bds7slIyiA, -URzO1H3bs8, -kA0eFuQ4HA).
        (["/m/07p6mqd", "/m/09x0r"], "splash - splatter, slosh, human voice, speech"),
        (["/m/02mk9", "/m/07qn4z3"], "sounds of things, engine, snake, onomatopoeia, rattle"),
        (["/m/07bgp", "/m/07q0h5t"], "livestock - farm animals - working animals, sheep, goat, bleat"),
        (
            ["/m/0ghcn6", "/t/dd00125"],
            "dog, cat, roaring cats (lions - tigers), canidae - dogs - wolves, growling, "
            "acoustic environment, inside - small room",
        ),
        (["/m/04rlf", "/m/07bjf"], "music, camera, single-lens reflex camera"),
        ([], ""),
    ],
)
def test_keywords(ontology, labels, keywords):
    assert ontology.keywords(labels) == keywords


def test_keywords_from_comma_separated_string(ontology):
    assert ontology.keywords(' "/m/07bjf", "/m/0dv5r"') == "camera, single-lens reflex camera, mechanisms"


def test_keywords_of_real_annotation_rows(ontology):
    rows = [  # Lines 1 and 6 of audioset_small/valid.jsonl, verbatim.
        r'{"youtube_id":"--QatB0N9ZE","start_seconds":70.0,"end_seconds":80.0,"labels":["\/m\/01sm1g"],'
        r'"orig_split":"train_unbalanced"}',
        r'{"youtube_id":"-B_zBSl2CUw","start_seconds":2.0,"end_seconds":12.0,"labels":["\/m\/07st88b",'
        r'"\/m\/09x0r"],"orig_split":"train_unbalanced"}',
    ]
    keywords = [ontology.keywords(json.loads(row)["labels"]) for row in rows]
    assert keywords == ["percussion, wood block", "frog, croak, human voice, speech"]


def test_unknown_label_names_mid_and_file(ontology):
    with pytest.raises(ValueError, match=r"Unknown AudioSet label id '/m/nope'.*audioset_ontology\.json"):
        ontology.keywords(["/m/07bjf", "/m/nope"])


def test_load_from_file(tmp_path):
    path = tmp_path / "ontology.json"
    nodes = [
        {"id": "/x/root", "name": "Vehicle", "child_ids": ["/x/car"]},
        {"id": "/x/other", "name": "Engine: motor", "child_ids": ["/x/car"]},
        {"id": "/x/car", "name": "Car, automobile", "child_ids": []},
    ]
    path.write_text(json.dumps(nodes))
    ontology = Ontology.load(path)
    assert ontology.source == str(path)
    assert ontology.keywords(["/x/car", "/x/root"]) == "vehicle, engine - motor, car - automobile"


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        Ontology.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('[{"id": "/x/a"}]')
    with pytest.raises(ValueError, match=r"bad\.json.*not an AudioSet ontology"):
        Ontology.load(tmp_path / "bad.json")
