"""COCO-format evaluation and calibration sets, decoded and preprocessed once.

A trial must not touch the disk: `load_eval_set` keeps every preprocessed image (uint8 NHWC) and the
ground truth in memory, and `subset_eval_set` cuts a smaller set (early stopping) without re-reading.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autoq.adapters.base import ImageMeta
from autoq.data.preprocess import Preprocess, prepare_image, read_image
from autoq.errors import AutoqWarning, DataError

if TYPE_CHECKING:
    from pycocotools.coco import COCO

__all__ = [
    "EvalSet",
    "IMAGE_EXTENSIONS",
    "load_calibration",
    "load_class_folders",
    "load_eval_set",
    "load_image_folder",
    "subset_eval_set",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True, eq=False)
class EvalSet:
    """Preprocessed evaluation images with their ground truth (if any).

    Attributes:
        images: uint8 NHWC at the network resolution, in the model's colour order.
        metas: per image, the mapping back to original pixels (``image_id`` = COCO image id).
        coco: ground truth (``pycocotools.coco.COCO``), built in memory; None for a plain image
            folder (label-free mode: the metric builds pseudo ground truth from the float model).
        category_ids: contiguous class index -> COCO category id (sorted ids); empty when unknown.
        class_names: contiguous class index -> category name.
        files: image file names, aligned with ``images``.
        labels: per image class index (classification folders), else None.
    """

    images: np.ndarray
    metas: tuple[ImageMeta, ...]
    coco: COCO | None
    category_ids: tuple[int, ...]
    class_names: tuple[str, ...]
    files: tuple[str, ...]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.metas)

    @property
    def image_ids(self) -> tuple[int, ...]:
        return tuple(m.image_id for m in self.metas)

    @property
    def size(self) -> tuple[int, int]:
        """Network input (h, w) the images were prepared for."""
        return int(self.images.shape[1]), int(self.images.shape[2])


def quiet_coco(dataset: dict[str, Any]) -> COCO:
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _read_annotations(annotations: Path) -> dict[str, Any]:
    """Parses and normalises a COCO detection JSON so COCOeval never hits a missing field."""
    annotations = Path(annotations)
    if not annotations.is_file():
        raise DataError(f"{annotations}: annotation file not found; check the annotations path in autoq.yaml")
    try:
        with open(annotations, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{annotations}: not valid JSON ({exc}); give a COCO-format annotation file") from None
    if not isinstance(data, dict):
        raise DataError(f"{annotations}: expected a COCO JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{annotations}: missing or invalid key {key!r}; give a COCO-format annotation file")
    try:
        images = [
            {**img, "id": int(img["id"]), "file_name": str(img["file_name"])} for img in data["images"]
        ]
        categories = [{**c, "id": int(c["id"]), "name": str(c.get("name", c["id"]))} for c in data["categories"]]
        anns = []
        for k, ann in enumerate(data["annotations"]):
            x, y, w, h = (float(v) for v in ann["bbox"])
            anns.append(
                {
                    **ann,
                    "id": ann.get("id", k + 1),
                    "image_id": int(ann["image_id"]),
                    "category_id": int(ann["category_id"]),
                    "bbox": [x, y, w, h],
                    "area": float(ann.get("area", w * h)),
                    "iscrowd": int(ann.get("iscrowd", 0)),
                }
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{annotations}: malformed entry ({type(exc).__name__}: {exc}); images need id and file_name, "
            "annotations image_id, category_id and bbox [x, y, w, h], categories id and name"
        ) from None
    if not categories:
        raise DataError(f"{annotations}: no categories; give a COCO-format annotation file with categories")
    known = {c["id"] for c in categories}
    unknown = {a["category_id"] for a in anns} - known
    if unknown:
        raise DataError(f"{annotations}: annotations use category ids {sorted(unknown)[:5]} not in categories")
    return {
        "info": data.get("info", {}),
        "licenses": data.get("licenses", []),
        "images": images,
        "annotations": anns,
        "categories": categories,
    }


def _prepare_files(
    paths: Sequence[Path], ids: Sequence[int], size: tuple[int, int], pp: Preprocess
) -> list[tuple[np.ndarray, ImageMeta] | DataError]:
    """Decodes and preprocesses in threads (OpenCV releases the GIL); errors are returned, not raised."""

    def one(arg: tuple[Path, int]) -> tuple[np.ndarray, ImageMeta] | DataError:
        path, image_id = arg
        try:
            return prepare_image(read_image(path), size, pp, image_id)
        except DataError as exc:
            return exc

    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, zip(paths, ids)))


def load_eval_set(
    images_dir: Path, annotations: Path | None, size: tuple[int, int], pp: Preprocess, *, subset: int = 0
) -> EvalSet:
    """Loads a COCO detection set once; every trial then reuses the in-memory images and ground truth.

    Args:
        images_dir: folder holding the images named by ``file_name`` in the JSON.
        annotations: COCO instances JSON; None: `load_image_folder` (no ground truth, label-free mode).
        size: network input (h, w).
        pp: preprocessing of the model.
        subset: > 0 keeps only the first ``subset`` images by sorted image id (deterministic).
    """
    if annotations is None:
        return load_image_folder(images_dir, size, pp, subset=subset)
    images_dir = Path(images_dir)
    dataset = _read_annotations(annotations)
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: images directory not found; check the images path in autoq.yaml")
    entries = sorted(dataset["images"], key=lambda img: img["id"])
    if subset > 0:
        entries = entries[:subset]
    if not entries:
        raise DataError(f"{annotations}: lists no images; give a COCO-format annotation file with images")
    paths = [images_dir / img["file_name"] for img in entries]
    for path in paths:
        if not path.is_file():
            raise DataError(
                f"{path}: listed in {Path(annotations).name} but missing on disk; "
                "point the images directory at the folder that holds it"
            )
    results = _prepare_files(paths, [img["id"] for img in entries], size, pp)
    ok = [(entry, r) for entry, r in zip(entries, results) if not isinstance(r, DataError)]
    bad = [r for r in results if isinstance(r, DataError)]
    if not ok:
        raise DataError(f"{images_dir}: none of the {len(entries)} images could be decoded; {bad[0]}")
    if bad:
        warnings.warn(f"skipped {len(bad)} undecodable image(s), first: {bad[0]}", AutoqWarning, stacklevel=2)

    categories = sorted(dataset["categories"], key=lambda c: c["id"])
    return EvalSet(
        images=np.stack([r[0] for _, r in ok]),
        metas=tuple(r[1] for _, r in ok),
        coco=quiet_coco(dataset),
        category_ids=tuple(c["id"] for c in categories),
        class_names=tuple(c["name"] for c in categories),
        files=tuple(entry["file_name"] for entry, _ in ok),
    )


def subset_eval_set(eval_set: EvalSet, count: int) -> EvalSet:
    """The first ``count`` images of ``eval_set`` (same order), sharing the ground truth; no disk access."""
    if count <= 0 or count >= len(eval_set):
        return eval_set
    return EvalSet(
        images=eval_set.images[:count],
        metas=eval_set.metas[:count],
        coco=eval_set.coco,
        category_ids=eval_set.category_ids,
        class_names=eval_set.class_names,
        files=eval_set.files[:count],
        labels=None if eval_set.labels is None else eval_set.labels[:count],
    )


def _decode_all(
    images_dir: Path, paths: Sequence[Path], size: tuple[int, int], pp: Preprocess
) -> tuple[list[int], np.ndarray, tuple[ImageMeta, ...]]:
    """(indices of the decodable paths, images, metas with image ids 1..n in ``paths`` order)."""
    results = _prepare_files(paths, list(range(1, len(paths) + 1)), size, pp)
    ok = [k for k, r in enumerate(results) if not isinstance(r, DataError)]
    bad = [r for r in results if isinstance(r, DataError)]
    if not ok:
        first = f"; {bad[0]}" if bad else ""
        raise DataError(f"{images_dir}: none of the {len(paths)} images could be decoded{first}")
    if bad:
        warnings.warn(f"skipped {len(bad)} undecodable image(s), first: {bad[0]}", AutoqWarning, stacklevel=3)
    return ok, np.stack([results[k][0] for k in ok]), tuple(results[k][1] for k in ok)  # type: ignore[index]


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def load_image_folder(images_dir: Path, size: tuple[int, int], pp: Preprocess, *, subset: int = 0) -> EvalSet:
    """A folder of images without annotations (label-free mode): image ids 1..n by sorted file name.

    ``coco`` is None and there are no categories; a metric that needs ground truth builds it from the
    float model's own outputs (see `autoq.objectives.accuracy.pseudo_ground_truth`).
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: images directory not found; check data.eval_images in autoq.yaml")
    paths = _image_files(images_dir)
    if subset > 0:
        paths = paths[:subset]
    if not paths:
        exts = "/".join(e[1:] for e in IMAGE_EXTENSIONS)
        raise DataError(f"{images_dir}: no {exts} images; put the evaluation images directly in this folder")
    ok, images, metas = _decode_all(images_dir, paths, size, pp)
    files = tuple(paths[k].name for k in ok)
    return EvalSet(images=images, metas=metas, coco=None, category_ids=(), class_names=(), files=files)


def load_class_folders(
    images_dir: Path,
    size: tuple[int, int],
    pp: Preprocess,
    *,
    subset: int = 0,
    class_names: Sequence[str] | None = None,
) -> EvalSet:
    """An ImageNet-style classification set: ``images_dir/<class name>/*.jpg``; ``labels`` = class index.

    Args:
        class_names: the model's classes in output order; default: the sorted sub-folder names.
            Every sub-folder must be one of them (classes without a folder are fine).
        subset: > 0 keeps ``subset`` images taken round-robin over the classes (deterministic).
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: images directory not found; check data.eval_images in autoq.yaml")
    folders = sorted(p for p in images_dir.iterdir() if p.is_dir())
    if not folders:
        raise DataError(f"{images_dir}: no class sub-folders; a classification set is eval_images/<class name>/*.jpg")
    names = tuple(str(n) for n in class_names) if class_names is not None else tuple(f.name for f in folders)
    index = {n: k for k, n in enumerate(names)}
    missing = [f.name for f in folders if f.name not in index]
    if missing:
        raise DataError(
            f"{images_dir}: sub-folder(s) {missing[:5]} are not in class_names; fix the folders or the option"
        )
    per_class = [[(p, index[f.name]) for p in _image_files(f)] for f in folders]
    entries = [e for group in _round_robin(per_class) for e in group]
    if subset > 0:
        entries = entries[:subset]
    if not entries:
        raise DataError(f"{images_dir}: the class sub-folders hold no images")
    ok, images, metas = _decode_all(images_dir, [p for p, _ in entries], size, pp)
    return EvalSet(
        images=images,
        metas=metas,
        coco=None,
        category_ids=tuple(range(len(names))),
        class_names=names,
        files=tuple(f"{entries[k][0].parent.name}/{entries[k][0].name}" for k in ok),
        labels=np.array([entries[k][1] for k in ok], np.int64),
    )


def _round_robin(groups: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Round-robin rows: the first item of every group, then the second, ... (shorter groups drop out)."""
    longest = max((len(g) for g in groups), default=0)
    return [[g[i] for g in groups if i < len(g)] for i in range(longest)]


def load_calibration(
    images_dir: Path, count: int, size: tuple[int, int], pp: Preprocess
) -> tuple[np.ndarray, tuple[str, ...]]:
    """The first ``count`` decodable images (sorted file names; ``count`` <= 0 = all) as uint8 NHWC + their names."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: calibration images directory not found; check its path in autoq.yaml")
    files = sorted(p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    images: list[np.ndarray] = []
    names: list[str] = []
    bad: list[DataError] = []
    start = 0
    want = count if count > 0 else len(files)
    # read in chunks so undecodable files are replaced by the next ones without decoding everything
    while len(images) < want and start < len(files):
        chunk = files[start : start + (want - len(images))]
        start += len(chunk)
        for path, r in zip(chunk, _prepare_files(chunk, [0] * len(chunk), size, pp)):
            if isinstance(r, DataError):
                bad.append(r)
            else:
                images.append(r[0])
                names.append(path.name)
    if not images:
        exts = "/".join(e[1:] for e in IMAGE_EXTENSIONS)
        raise DataError(
            f"{images_dir}: no readable calibration images ({exts}); put some images there or fix the path"
        )
    if bad:
        warnings.warn(f"skipped {len(bad)} undecodable calibration image(s), first: {bad[0]}", AutoqWarning, stacklevel=2)
    return np.stack(images), tuple(names)
