"""Training sessions without the generators: the mix, the detector's answer, scoring, and every page template with
each kind of item (the templates are strict: a missing key is an error, not an empty string)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from verifier.errors import InputError
from verifier.review.training import ANSWERS, TrainingPlan, TrainingStore, detector_says
from verifier.review.web import _templates


def test_the_mix_gives_n_images_in_proportion() -> None:
    kinds = TrainingPlan(n=7, mix={"real": 2, "synthetic": 1, "tampered": 1}).kinds(random.Random(1))
    # 3.5, 1.75, 1.75: floors 3, 1, 1, and the two largest remainders (0.75 each) get the rest.
    assert [kinds.count(k) for k in ANSWERS] == [3, 2, 2]
    assert TrainingPlan(n=3, mix={"real": 0, "synthetic": 0, "tampered": 1}).kinds(random.Random(1)) == ["tampered"] * 3
    for bad in ({"real": 0, "synthetic": 0, "tampered": 0}, {"real": -1}, {"fake": 1}):
        with pytest.raises(InputError):
            TrainingPlan(n=3, mix=bad)
    with pytest.raises(InputError):
        TrainingPlan(n=0, mix={"real": 1})


def test_the_detector_answers_by_its_thresholds() -> None:
    scores = {"synthetic_score": 0.5, "threshold": 0.6, "tamper_score": 0.2, "tamper_threshold": 0.9}
    assert detector_says(scores) == "real"
    assert detector_says({**scores, "synthetic_score": 0.7}) == "synthetic"
    assert detector_says({**scores, "synthetic_score": 0.7, "tamper_score": 0.95}) == "tampered"


def _item(kind: str, answer: str | None, says: str, **extra: Any) -> dict[str, Any]:
    detector = {"synthetic_score": 0.1, "tamper_score": 0.2, "threshold": 0.9, "tamper_threshold": 0.9, "says": says}
    return {"kind": kind, "source": "CT_small.dcm", "modality": "CT", "answer": answer, "detector": detector,
            "correct": answer == kind if answer else None, **extra}  # fmt: skip


def test_scores_and_pages_for_every_kind_of_item() -> None:
    items = [
        _item("real", "real", "real"),
        _item("synthetic", "real", "real", generator="vae"),
        _item("tampered", "tampered", "real", mode="inject", click=[0.2, 0.3], click_hit=True),
        _item("tampered", None, "real", mode="remove"),
    ]
    session = {"id": "x" * 24, "trainee": "Dana <b>", "created": "2026-01-01T00:00:00Z", "items": items}
    scores = TrainingStore.scores(session)
    assert scores == {"real": {"images": 1, "trainee": 1, "detector": 1},
                      "synthetic": {"images": 1, "trainee": 0, "detector": 0},
                      "tampered": {"images": 1, "trainee": 1, "detector": 0}}  # fmt: skip
    common = {"request_path": "/ui/train", "user": None, "s": session, "total": len(items)}
    for index, item in enumerate(items[:3]):
        html = _templates.get_template("train_feedback.html.j2").render(
            **common, index=index, item=item, giveaway=TrainingStore.giveaway(item)
        )
        assert f"<b>{item['kind']}</b>" in html and "The detector said" in html
    assert "painted into the outlined region" in TrainingStore.giveaway(items[2])
    question = _templates.get_template("train_session.html.j2").render(**common, index=3, scores=scores, kinds=ANSWERS)
    assert "Image 4 of 4" in question and 'value="tampered"' in question
    done = _templates.get_template("train_session.html.j2").render(**common, index=None, scores=scores, kinds=ANSWERS)
    assert "Done, Dana &lt;b&gt;" in done  # escaped
    user = {"id": "0" * 16, "name": "t", "scope": "review", "can_act": True, "csrf": "c"}
    listing = {**session, "answered": 3, "scores": scores}
    trainer = _templates.get_template("train_trainer.html.j2").render(
        request_path="/ui/train", user=user, sessions=[listing], error="", kinds=ANSWERS
    )
    assert "3 of 4" in trainer and "1/1 · 1/1" in trainer
