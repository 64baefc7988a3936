"""``common.images``: one list of image suffixes and of the sample dataset's classes, used everywhere."""

from __future__ import annotations

from common.images import IMAGE_EXTENSIONS, SAMPLE_CLASSES


def test_the_sample_dataset_and_its_users_share_one_class_list():
    from local_mode import demo
    from train import sample_data

    assert SAMPLE_CLASSES == ("ball", "box", "cone", "ring")
    assert sample_data.CLASSES is SAMPLE_CLASSES and demo.CLASSES is SAMPLE_CLASSES
    assert set(sample_data.PATTERNS) == set(SAMPLE_CLASSES)  # each class has its print


def test_the_trainer_and_the_search_count_the_same_files_as_images(tmp_path):
    from train import data
    from tuning import space

    assert data.IMAGE_EXTENSIONS is IMAGE_EXTENSIONS and all(s == s.lower() for s in IMAGE_EXTENSIONS)
    for name in ("a.jpg", "b.PNG", "c.webp", "notes.txt", "d.tiff"):
        (tmp_path / "training" / "x").mkdir(parents=True, exist_ok=True)
        (tmp_path / "training" / "x" / name).write_bytes(b"")
    assert space.training_images(str(tmp_path)) == 4
