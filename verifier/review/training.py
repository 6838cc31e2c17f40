"""Training staff to tell real images from fakes: sessions of real corpus images and fakes made on the spot.

A trainer starts a session (:meth:`TrainingStore.create`): N images, drawn by a seeded mix of *real* (files of the
training corpus), *synthetic* (paired fakes of corpus images by an in-house generator) and *tampered* (a lesion
injected, removed or copied by the tamper generator), of the chosen modalities. Every fake is written the one way
generated images are (:func:`verifier.generation.generate_signed_image`: declared synthetic, recorded in the audit
log, watermarked, signed), so a training fake can never pass for a patient scan. The detector scores every image
when the session is made, so the trainee's pages answer at once.

A trainee (a name, no login) answers each image real, synthetic or tampered, and may click where a tampered image
was changed; the feedback shows the truth, the detector's opinion and heatmap, and what gives the fake away. At the
end the trainee's score per kind stands beside the detector's on the same images. Sessions are kept as JSON under
the store's directory (``home/training/<id>/``), with the shown images, so a trainer can follow each trainee.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
import re
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from verifier.errors import InputError
from verifier.intake.queue import atomic_write

if TYPE_CHECKING:
    from detectors.data.reader import ImageData
    from verifier.detection import DetectorSetup
    from verifier.generation import GenerationKeys

__all__ = ["ANSWERS", "TrainingPlan", "TrainingStore", "detector_says"]

ANSWERS = ("real", "synthetic", "tampered")
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{24}")
#: The generator each kind of fake is made with.
_SYNTHETIC_GENERATORS = ("vae",)
_TAMPER_WORDS = {
    "inject": "a lesion was painted into the outlined region",
    "remove": "a lesion was removed from the outlined region (filled in from its surroundings)",
    "copymove": "the outlined region was copied from another part of the same image",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingPlan:
    """What a trainer asks for: ``n`` images, the share of each kind, the modalities (empty: any)."""

    n: int
    mix: dict[str, float]
    modalities: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.n <= 50:
            raise InputError("a session has 1 to 50 images")
        if set(self.mix) - set(ANSWERS) or any(v < 0 for v in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise InputError("the mix gives each of real, synthetic and tampered a share of at least 0, not all 0")

    def kinds(self, rng: random.Random) -> list[str]:
        """``n`` kinds in proportion to the mix (largest remainders), shuffled."""
        total = sum(self.mix.values())
        exact = {k: self.n * self.mix.get(k, 0.0) / total for k in ANSWERS}
        counts = {k: int(v) for k, v in exact.items()}
        for k in sorted(ANSWERS, key=lambda k: exact[k] - counts[k], reverse=True)[: self.n - sum(counts.values())]:
            counts[k] += 1
        kinds = [k for k in ANSWERS for _ in range(counts[k])]
        rng.shuffle(kinds)
        return kinds


def detector_says(scores: dict[str, float]) -> str:
    """The detector's answer from its scores: tampered, else synthetic, else real (each against its threshold)."""
    if scores["tamper_score"] >= scores["tamper_threshold"]:
        return "tampered"
    return "synthetic" if scores["synthetic_score"] >= scores["threshold"] else "real"


class TrainingStore:
    """Training sessions under ``directory``, one subdirectory each."""

    def __init__(self, directory: Path, corpus: Path | None) -> None:
        self.directory = Path(directory)
        self.corpus = corpus
        self._lock = threading.Lock()

    # -- making a session --------------------------------------------------------------------------------------

    def corpus_files(self, modalities: Sequence[str] = ()) -> list[tuple[Path, str]]:
        """DICOM files of the corpus with one image, and their modality (those in ``modalities``, if given)."""
        import pydicom

        from verifier.instance import iter_input_files

        if self.corpus is None or not self.corpus.is_dir():
            raise InputError("no training corpus: set training_corpus to a directory of real DICOM images")
        out = []
        for path in sorted(iter_input_files([self.corpus])):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                modality = str(ds.get("Modality", "") or "OT")
            except Exception:  # noqa: BLE001, S112 - an unreadable corpus file is skipped, not fatal
                continue
            if "SOPClassUID" in ds and (not modalities or modality in modalities):
                out.append((path, modality))
        if not out:
            raise InputError("the training corpus has no usable image" + (" of those modalities" if modalities else ""))
        return out

    def create(
        self, plan: TrainingPlan, *, keys: GenerationKeys, detector: DetectorSetup, trainer: str
    ) -> str:
        """Make a session: draw the images, make the fakes (signed), score all with the detector; its id."""
        from verifier.generation import PairedSource, generate_signed_image, load_generator
        from verifier.review.render import load_detector

        seed = plan.seed if plan.seed is not None else secrets.randbelow(2**31)
        rng = random.Random(seed)  # noqa: S311 - which images a trainee sees; nothing secret depends on it
        files = self.corpus_files(plan.modalities)
        session_id = secrets.token_urlsafe(18)
        folder = self.directory / session_id
        folder.mkdir(parents=True, mode=0o700)
        model = load_detector(detector)
        generators: dict[str, Any] = {}
        items = []
        for index, kind in enumerate(plan.kinds(rng)):
            source, modality = files[rng.randrange(len(files))]
            item: dict[str, Any] = {"kind": kind, "source": source.name, "modality": modality, "answer": None}
            shown = source
            if kind != "real":
                name = rng.choice(_SYNTHETIC_GENERATORS) if kind == "synthetic" else "tamper"
                generator = generators.setdefault(name, load_generator(name))
                paired = PairedSource.from_file(source)
                item_seed = rng.randrange(2**31)
                shown = folder / f"item-{index}.dcm"
                item["audit_id"] = generate_signed_image(
                    generator, name=name, seed=item_seed, path=shown, modality=paired.modality or "CT", keys=keys,
                    source=paired,
                )  # fmt: skip
                item["generator"] = name
                if kind == "tampered":
                    result = generator.tamper(paired.pixels, seed=item_seed)
                    item["mode"] = result.mode
                    np.save(folder / f"mask-{index}.npy", result.mask)
            image = _read(shown)
            report = model.detect(image)
            names = ("synthetic_score", "tamper_score", "threshold", "tamper_threshold")
            item["detector"] = {k: round(float(getattr(report, k)), 4) for k in names}
            item["detector"]["says"] = detector_says(item["detector"])
            self._write_images(folder, index, image, report, item)
            items.append(item)
        session = {
            "id": session_id, "created": _now(), "trainer": trainer, "trainee": None, "seed": seed,
            "plan": {"n": plan.n, "mix": plan.mix, "modalities": list(plan.modalities)}, "items": items,
            "model_tag": model.config.tag,
        }  # fmt: skip
        self._save(session)
        return session_id

    @staticmethod
    def _write_images(folder: Path, index: int, image: ImageData, report: Any, item: dict[str, Any]) -> None:
        from verifier.review.render import frame_png, outline_png, overlay_png

        (folder / f"image-{index}.png").write_bytes(frame_png(image, 0))
        (folder / f"heat-{index}.png").write_bytes(overlay_png(report))
        mask_file = folder / f"mask-{index}.npy"
        if mask_file.is_file():
            (folder / f"truth-{index}.png").write_bytes(outline_png(np.load(mask_file)))

    # -- a trainee's answers -----------------------------------------------------------------------------------

    def load(self, session_id: str) -> dict[str, Any]:
        if not _SESSION_ID.fullmatch(session_id):
            raise InputError("no such training session")
        try:
            data = json.loads((self.directory / session_id / "session.json").read_text())
        except (OSError, ValueError):
            raise InputError("no such training session") from None
        if not isinstance(data, dict):
            raise InputError("no such training session")
        return data

    def image(self, session_id: str, index: int, kind: str) -> Path:
        """One of a session's pictures: ``image`` (as shown), ``heat`` (detector), ``truth`` (tampered region)."""
        session = self.load(session_id)
        if kind not in ("image", "heat", "truth") or not 0 <= index < len(session["items"]):
            raise InputError("no such picture")
        if kind != "image" and session["items"][index]["answer"] is None:
            raise InputError("answer first")  # the heatmap and the truth would give the answer away
        path = self.directory / session_id / f"{kind}-{index}.png"
        if not path.is_file():
            raise InputError("no such picture")
        return path

    def set_trainee(self, session_id: str, name: str) -> None:
        name = " ".join("".join(c for c in name if c.isprintable()).split())[:80]
        if not name:
            raise InputError("give your name (it labels your results)")
        with self._lock:
            session = self.load(session_id)
            if session["trainee"] is None:
                session["trainee"] = name
                self._save(session)

    def answer(self, session_id: str, index: int, answer: str, click: tuple[float, float] | None) -> dict[str, Any]:
        """Record the answer to image ``index`` (once); return the item with the truth and the feedback."""
        if answer not in ANSWERS:
            raise InputError("answer real, synthetic or tampered")
        with self._lock:
            session = self.load(session_id)
            items = session["items"]
            if not 0 <= index < len(items):
                raise InputError("no such image")
            item: dict[str, Any] = items[index]
            if item["answer"] is None:
                item["answer"] = answer
                item["correct"] = answer == item["kind"]
                item["answered"] = _now()
                if click is not None and item["kind"] == "tampered":
                    item["click"] = [round(click[0], 4), round(click[1], 4)]
                    item["click_hit"] = self._hit(session_id, index, click)
                self._save(session)
        return item

    def _hit(self, session_id: str, index: int, click: tuple[float, float]) -> bool:
        """Whether a click (fractions of width and height) falls on the tampered region or near it (5 %)."""
        mask = np.load(self.directory / session_id / f"mask-{index}.npy")
        rows, cols = mask.shape
        y, x = min(rows - 1, max(0, int(click[1] * rows))), min(cols - 1, max(0, int(click[0] * cols)))
        margin = max(2, round(0.05 * max(rows, cols)))
        return bool(mask[max(0, y - margin) : y + margin + 1, max(0, x - margin) : x + margin + 1].any())

    # -- results -----------------------------------------------------------------------------------------------

    @staticmethod
    def scores(session: dict[str, Any]) -> dict[str, dict[str, int]]:
        """Per kind: images, the trainee's right answers, the detector's right answers (answered images only)."""
        out = {k: {"images": 0, "trainee": 0, "detector": 0} for k in ANSWERS}
        for item in session["items"]:
            if item.get("answer") is None:
                continue
            row = out[item["kind"]]
            row["images"] += 1
            row["trainee"] += int(bool(item.get("correct")))
            row["detector"] += int(item["detector"]["says"] == item["kind"])
        return out

    def sessions(self) -> list[dict[str, Any]]:
        """Every session, newest first, with its scores (for the trainer's page)."""
        out = []
        for path in self.directory.glob("*/session.json") if self.directory.is_dir() else ():
            try:
                session = self.load(path.parent.name)
            except InputError:
                continue
            answered = sum(1 for i in session["items"] if i.get("answer") is not None)
            out.append({**session, "answered": answered, "scores": self.scores(session)})
        return sorted(out, key=lambda s: str(s.get("created")), reverse=True)

    def _save(self, session: dict[str, Any]) -> None:
        atomic_write(self.directory / session["id"] / "session.json", json.dumps(session, indent=1).encode())

    @staticmethod
    def giveaway(item: dict[str, Any]) -> str:
        """What gives the image away (or that nothing does: it is real)."""
        if item["kind"] == "real":
            return f"A real {item['modality']} image from the training corpus ({item['source']}); nothing was changed."
        if item["kind"] == "synthetic":
            return (f"Made just now by the in-house {item.get('generator')} generator from a real {item['modality']} "
                    "image: the anatomy is kept, but fine noise grain and small detail are smoothed away. The file "
                    "itself says so: Image Type DERIVED with a synthetic derivation code, signed by the generator key, "
                    "watermarked.")  # fmt: skip
        what = _TAMPER_WORDS.get(str(item.get("mode")), "the outlined region was changed")
        return (f"The tamper generator changed a real {item['modality']} image: {what}; everywhere else the image is "
                "untouched. Look for texture or noise that does not match the surroundings.")  # fmt: skip


def _read(path: Path) -> ImageData:
    from detectors.data.reader import read_image

    return read_image(path)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
