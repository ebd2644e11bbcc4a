"""The labels of an annotation project, in memory: what the exporters write and the COCO importer
reads. One image's objects are binary masks with a category name; the project's category list
fixes the order (COCO ids 1..K, YOLO classes 0..K-1, semantic map values 1..K).

Torch-free and free of any file format: see ``formats.py`` for the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["LabelSet", "LabeledImage", "LabeledObject"]


@dataclass(eq=False)
class LabeledObject:
    """One object of an image.

    Arguments:
        category: the category's name (one of the project's categories; checked by
            :meth:`LabelSet.validate`, since an object alone does not know the list).
        mask: H x W bool, True on the object's pixels.
        object_id: the store's id of the object, when it has one (export keeps the order of the
            list, not of the ids).
    """

    category: str
    mask: np.ndarray
    object_id: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.category, str) or not self.category:
            raise ValueError(f"object category must be a non-empty string, got {self.category!r}")
        if not isinstance(self.mask, np.ndarray):
            raise ValueError(
                f"object {self.category!r}: mask must be a numpy array, "
                f"got {type(self.mask).__name__}"
            )
        if self.mask.ndim != 2:
            raise ValueError(
                f"object {self.category!r}: mask must be H x W, got shape {self.mask.shape}"
            )
        if self.mask.dtype != np.bool_:
            raise ValueError(
                f"object {self.category!r}: mask must be bool, got dtype {self.mask.dtype}"
            )
        if self.object_id is not None and (
            isinstance(self.object_id, bool) or not isinstance(self.object_id, (int, np.integer))
        ):
            raise ValueError(
                f"object {self.category!r}: object_id must be an int or None, "
                f"got {self.object_id!r}"
            )

    def __eq__(self, other: object) -> bool:
        # The generated __eq__ would compare masks with ``==``, whose truth value numpy refuses;
        # equal objects have the same category, id and pixels.
        if not isinstance(other, LabeledObject):
            return NotImplemented
        return (
            self.category == other.category
            and self.object_id == other.object_id
            and np.array_equal(self.mask, other.mask)
        )

    __hash__ = None  # mutable, compared by value


@dataclass
class LabeledImage:
    """One image and its objects, in drawing order (later objects on top).

    Arguments:
        file_name: the image's path relative to the project's images folder, with ``/``
            separators (no absolute path, no ``..``, no backslash).
        width, height: the image's size in pixels; every object's mask is height x width.
        objects: the image's objects (may be empty: an image seen and found to hold nothing).
    """

    file_name: str
    width: int
    height: int
    objects: list[LabeledObject] = field(default_factory=list)

    def __post_init__(self) -> None:
        name = self.file_name
        if not isinstance(name, str) or not name:
            raise ValueError(f"image file_name must be a non-empty string, got {name!r}")
        parts = name.split("/")
        if "\\" in name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(
                f"image {name!r}: file_name must be a relative posix path without '.', '..', "
                "empty parts or backslashes"
            )
        for what, v in (("width", self.width), ("height", self.height)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"image {name!r}: {what} must be a positive int, got {v!r}")
        if not isinstance(self.objects, list):
            raise ValueError(
                f"image {name!r}: objects must be a list, got {type(self.objects).__name__}"
            )
        for i, obj in enumerate(self.objects):
            if not isinstance(obj, LabeledObject):
                raise ValueError(
                    f"image {name!r}: object {i} must be a LabeledObject, got {type(obj).__name__}"
                )
            if obj.mask.shape != (self.height, self.width):
                raise ValueError(
                    f"image {name!r}: object {i} ({obj.category!r}) has a mask of shape "
                    f"{obj.mask.shape}, expected (height, width) = ({self.height}, {self.width})"
                )


@dataclass
class LabelSet:
    """A project's labels: its categories, in order, and its images.

    Arguments:
        categories: the category names, unique, in the project's order.
        images: the labelled images, with unique file names.

    Construction checks the lists themselves; :meth:`validate` checks that every object's
    category is one of ``categories`` (the writers call it).
    """

    categories: list[str]
    images: list[LabeledImage]

    def __post_init__(self) -> None:
        if not isinstance(self.categories, list) or not all(
            isinstance(c, str) and c for c in self.categories
        ):
            raise ValueError(
                f"categories must be a list of non-empty strings, got {self.categories!r}"
            )
        seen: set[str] = set()
        for c in self.categories:
            if c in seen:
                raise ValueError(f"category {c!r} is listed twice")
            seen.add(c)
        if not isinstance(self.images, list):
            raise ValueError(f"images must be a list, got {type(self.images).__name__}")
        names: set[str] = set()
        for i, im in enumerate(self.images):
            if not isinstance(im, LabeledImage):
                raise ValueError(f"image {i} must be a LabeledImage, got {type(im).__name__}")
            if im.file_name in names:
                raise ValueError(f"image {im.file_name!r} is listed twice")
            names.add(im.file_name)

    def validate(self) -> None:
        """Raise ValueError naming the image and object whose category is not a project
        category (the other checks run at construction)."""
        known = set(self.categories)
        for im in self.images:
            for i, obj in enumerate(im.objects):
                if obj.category not in known:
                    raise ValueError(
                        f"image {im.file_name!r}: object {i} has category {obj.category!r}, "
                        f"which is not one of the project categories {self.categories}"
                    )
