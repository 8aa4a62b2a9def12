"""Region features: image decoding, HDF5 layout, extraction, sharding."""
from __future__ import annotations

import json
import random
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from tbkin.errors import BadImageError
from tbkin.features.coco import load_detection_data
from tbkin.features.detector import (
    SMALL_ARCHITECTURE,
    DetectorArchitecture,
    RegionSelection,
    TorchvisionRegionDetector,
    build_small_detector,
    load_region_detector,
    save_detector,
)
from tbkin.features.extract import extract_features, shard_slice
from tbkin.features.hdf5 import (
    FeatureFileError,
    RegionFeatureReader,
    RegionFeatureWriter,
    combine_shards,
    skipped_list_path,
)
from tbkin.features.images import load_rgb

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
SHAPES = ("circle", "square", "triangle")


def make_coco_fixture(root: Path, num_images: int = 6, size: int = 64, seed: int = 0) -> tuple[Path, Path]:
    """A tiny COCO-format shapes set: (instances JSON, image folder)."""
    rng = random.Random(seed)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        canvas = Image.new("RGB", (size, size), (235, 235, 235))
        draw = ImageDraw.Draw(canvas)
        for _ in range(rng.randint(1, 3)):
            shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
            large = rng.random() < 0.5
            side = size // 3 if large else size // 5
            x, y = rng.randint(0, size - side - 1), rng.randint(0, size - side - 1)
            box = [x, y, x + side, y + side]
            if shape == "circle":
                draw.ellipse(box, fill=COLORS[color])
            elif shape == "square":
                draw.rectangle(box, fill=COLORS[color])
            else:
                draw.polygon([(x + side / 2, y), (x, y + side), (x + side, y + side)], fill=COLORS[color])
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": SHAPES.index(shape) + 1,
                "bbox": [x, y, side, side], "area": side * side, "iscrowd": 0,
                "attributes": {"color": color, "size": "large" if large else "small"},
            })
        name = f"{image_id:06d}.png"
        canvas.save(image_dir / name)
        images.append({"id": image_id, "file_name": name, "width": size, "height": size})
    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    instances = root / "instances.json"
    instances.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return instances, image_dir


def tiny_detector(instances: Path, size: int = 64) -> TorchvisionRegionDetector:
    """An untrained small detector: enough to exercise every code path quickly."""
    data = load_detection_data(instances)
    arch = DetectorArchitecture(
        name=SMALL_ARCHITECTURE, label_names=data.label_names(), category_ids=[0, *data.category_ids],
        attribute_names=data.attribute_names, min_size=size, max_size=size,
        channels=[8, 8, 16, 16, 16, 16], anchor_sizes=[8.0, 16.0, 32.0], representation_size=32,
    )
    torch.manual_seed(0)
    return TorchvisionRegionDetector(build_small_detector(arch).eval(), arch, device="cpu")


@pytest.fixture(scope="module")
def fixture_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    instances, image_dir = make_coco_fixture(root, num_images=7)
    return instances, image_dir, tiny_detector(instances)


# ---------------------------------------------------------------- image decoding


def _pattern(width=40, height=20) -> np.ndarray:
    array = np.zeros((height, width, 3), np.uint8)
    array[:, : width // 2] = (200, 10, 10)          # left half red
    array[:5, :] = (10, 10, 200)                      # top rows blue
    return array


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK", "LA"])
def test_odd_image_modes_become_rgb_uint8(tmp_path, mode):
    rgb = Image.fromarray(_pattern())
    if mode == "I;16":
        gray16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
        image = Image.fromarray(gray16)
        assert image.mode.startswith("I;16")
    elif mode == "P":
        image = rgb.quantize(colors=8)
    else:
        image = rgb.convert(mode)
    path = tmp_path / f"img_{mode.replace(';', '')}.{'tiff' if mode == 'CMYK' else 'png'}"
    image.save(path)
    array = load_rgb(path)
    assert array.shape == (20, 40, 3) and array.dtype == np.uint8
    if mode in ("L", "I;16", "LA"):
        expected = np.asarray(rgb.convert("L"))
        assert np.abs(array[:, :, 0].astype(int) - expected).max() <= 1
        assert (array[:, :, 0] == array[:, :, 2]).all()
    else:
        assert np.abs(array.astype(int) - _pattern().astype(int)).max() <= 40


def test_transparent_pixels_are_shown_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2] = (255, 0, 0, 255)                       # opaque red top, transparent black bottom
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    array = load_rgb(tmp_path / "a.png")
    assert (array[0, 0] == (255, 0, 0)).all() and (array[3, 3] == (255, 255, 255)).all()


def test_exif_rotation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6                                  # camera turned: rotate 90 degrees clockwise to view
    Image.fromarray(_pattern()).save(tmp_path / "r.jpg", exif=exif, quality=95)
    array = load_rgb(tmp_path / "r.jpg")
    assert array.shape == (40, 20, 3)                 # width and height swapped
    # the blue top rows end up on the right-hand side after a clockwise turn
    assert array[:, -2, 2].mean() > 150 and array[:, 2, 2].mean() < 100


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00"])
def test_bad_image_names_the_file(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(BadImageError, match="broken.png"):
        load_rgb(path)
    with pytest.raises(BadImageError, match="missing.png"):
        load_rgb(tmp_path / "missing.png")


# ---------------------------------------------------------------- HDF5 writer / reader


def test_written_regions_read_back_equal(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "f.h5"
    rows = {}
    with RegionFeatureWriter(path, num_regions=5, feature_dim=7, label_names=["__background__", "a", "b"]) as w:
        for image_id, k in [(3, 5), (10, 2), (11, 0)]:
            boxes = np.sort(rng.uniform(0, 50, (k, 4)).astype(np.float32).reshape(k, 2, 2), axis=1).transpose(0, 2, 1).reshape(k, 4)
            rows[image_id] = dict(
                boxes=boxes, scores=rng.uniform(0.2, 1, k).astype(np.float32),
                labels=rng.integers(1, 3, k).astype(np.int32), features=rng.normal(size=(k, 7)).astype(np.float32),
            )
            w.append(image_id, 64, 48, **rows[image_id])
    with RegionFeatureReader(path) as reader:
        assert list(reader.image_ids) == [3, 10, 11] and 10 in reader and 4 not in reader
        for image_id, row in rows.items():
            regions = reader.get(image_id)
            k = len(row["boxes"])
            assert regions.num_boxes == k and (regions.width, regions.height) == (64, 48)
            np.testing.assert_array_equal(regions.features[:k], row["features"])
            np.testing.assert_array_equal(regions.boxes[:k], row["boxes"])
            np.testing.assert_array_equal(regions.labels[:k], row["labels"])
            np.testing.assert_array_equal(regions.scores[:k], row["scores"])
            b = row["boxes"]
            np.testing.assert_allclose(regions.position[:k, 0], b[:, 0] / 64, rtol=1e-6)
            np.testing.assert_allclose(regions.position[:k, 4], (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / (64 * 48), rtol=1e-5)
            # padding rows
            assert (regions.labels[k:] == -1).all() and (regions.scores[k:] == 0).all()
            assert (regions.features[k:] == 0).all() and (regions.boxes[k:] == 0).all()
            assert regions.valid().features.shape == (k, 7)
        with pytest.raises(Exception, match="image id 4"):
            reader.get(4)
        # Statistics over the real regions only (padding rows are zeros and would bias them).
        real = np.concatenate([row["features"] for row in rows.values()])
        mean, std = reader.feature_statistics(chunk=2)
        np.testing.assert_allclose(mean, real.mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(std, real.std(axis=0), rtol=1e-4, atol=1e-6)


def test_writer_leaves_no_file_on_error(tmp_path):
    path = tmp_path / "f.h5"
    with pytest.raises(RuntimeError):
        with RegionFeatureWriter(path, 2, 3, ["__background__", "a"]) as w:
            w.append(1, 10, 10, np.zeros((0, 4)), np.zeros(0), np.zeros(0), np.zeros((0, 3)))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- extraction


def test_shard_slices_cover_split_on_batch_boundaries():
    for n_items, n_shards, batch in [(7, 2, 2), (10, 3, 4), (3, 5, 2), (0, 2, 4)]:
        slices = [shard_slice(n_items, i, n_shards, batch) for i in range(n_shards)]
        covered = [i for s in slices for i in range(n_items)[s]]
        assert covered == list(range(n_items))
        assert all(s.start % batch == 0 for s in slices if s.stop > s.start)


def test_extraction_layout_dtypes_and_padding(tmp_path, fixture_set):
    instances, image_dir, detector = fixture_set
    records = load_detection_data(instances).images
    out = tmp_path / "val.h5"
    m = 120  # more than the 100 proposals the RPN passes on: rows must be padded
    summary = extract_features(detector, records, image_dir, out, RegionSelection(m, min_score=0.0, nms_iou=0.3), batch_size=3)
    assert summary.images == len(records) == 7
    n, d = len(records), detector.feature_dim
    with h5py.File(out, "r") as h5:
        expected = {
            "image_id": ((n,), np.int64), "width": ((n,), np.int32), "height": ((n,), np.int32),
            "num_boxes": ((n,), np.int32), "features": ((n, m, d), np.float32), "boxes": ((n, m, 4), np.float32),
            "position": ((n, m, 5), np.float32), "labels": ((n, m), np.int32), "scores": ((n, m), np.float32),
        }
        for name, (shape, dtype) in expected.items():
            assert h5[name].shape == shape and h5[name].dtype == dtype, name
        assert h5["features"].chunks == (1, m, d)
        assert json.loads(h5.attrs["label_names"]) == ["__background__", "circle", "square", "triangle"]
        assert h5.attrs["num_regions"] == m and h5.attrs["feature_dim"] == d
        assert list(h5["image_id"][:]) == sorted(r.id for r in records)
        num_boxes = h5["num_boxes"][:]
        assert (num_boxes < m).all() and num_boxes.max() > 0
        for row, k in enumerate(num_boxes):
            assert (h5["labels"][row, :k] >= 1).all() and (h5["labels"][row, k:] == -1).all()
            assert (h5["scores"][row, :k] > 0).all() and (h5["scores"][row, k:] == 0).all()
            assert np.all(np.diff(h5["scores"][row, :k]) <= 0)          # sorted by confidence
            boxes = h5["boxes"][row, :k]
            assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, :] <= 64).all() and (boxes >= 0).all()
            assert (h5["features"][row, k:] == 0).all() and np.abs(h5["features"][row, :k]).sum() > 0


def _small_feature_file(path: Path, image_ids, float16: bool = False) -> Path:
    """Image k of ``image_ids`` has k % 4 regions (m = 3, D = 4), boxes shifted by k."""
    rng = np.random.default_rng(1)
    with RegionFeatureWriter(path, num_regions=3, feature_dim=4, label_names=["a", "b"], float16=float16) as w:
        for k, image_id in enumerate(image_ids):
            n = k % 4
            boxes = np.tile(np.array([[1, 2, 10, 12]], np.float32), (n, 1)) + k
            w.append(image_id, 32, 24, boxes, np.full(n, 0.5, np.float32), np.ones(n, np.int32),
                     rng.normal(size=(n, 4)).astype(np.float32))
    return path


def test_reader_reads_chosen_datasets_of_many_images(tmp_path):
    path = _small_feature_file(tmp_path / "f.h5", range(1, 400))
    with RegionFeatureReader(path) as reader:
        # rows close together are read in one slice, rows far apart by a point selection
        for ids in ([5, 7, 5, 9999], [300, 1, 300]):
            data, index = reader.get_many(np.asarray(ids), ("boxes", "num_boxes"))
            assert set(data) == {"boxes", "num_boxes"}
            assert len(data["boxes"]) == len({i for i in ids if i in reader})
            for image_id, row in zip(ids, index):
                if image_id not in reader:
                    assert row == -1
                    continue
                np.testing.assert_array_equal(data["boxes"][row], reader.get(image_id).boxes)
                assert data["num_boxes"][row] == reader.get(image_id).num_boxes
        data, index = reader.get_many([9999], ("boxes", "labels", "num_boxes"))
        assert list(index) == [-1]
        assert data["boxes"].shape == (0, 3, 4) and data["labels"].shape == (0, 3) and data["num_boxes"].shape == (0,)


def test_reader_cache_and_errors_naming_the_file_and_image(tmp_path):
    import re

    path = _small_feature_file(tmp_path / "f.h5", [1, 2])
    cached, plain = RegionFeatureReader(path, cache=True), RegionFeatureReader(path)
    assert cached.get(2) is cached.get(2) and plain.get(2) is not plain.get(2)
    np.testing.assert_array_equal(cached.get(2).features, plain.get(2).features)
    with pytest.raises(FeatureFileError, match=re.escape(f"{path}: no regions for image id 3")):
        cached.get(3)
    with pytest.raises(FeatureFileError, match=re.escape(f"cannot open region features {tmp_path / 'nope.h5'}")):
        RegionFeatureReader(tmp_path / "nope.h5")
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5["image_id"] = np.arange(3)
    with pytest.raises(FeatureFileError, match=re.escape(f"{tmp_path / 'other.h5'}: not a region-feature file")):
        RegionFeatureReader(tmp_path / "other.h5")


def test_region_tensors_of_a_float16_file_are_float32(tmp_path):
    from tbkin.train.data import RegionTensors

    with RegionFeatureReader(_small_feature_file(tmp_path / "f.h5", [1, 2, 3], float16=True)) as reader:
        regions = reader.get(3)
    tensors = RegionTensors.from_regions(regions)
    assert regions.features.dtype == np.float16 and tensors.features.dtype == torch.float32
    torch.testing.assert_close(tensors.features, torch.from_numpy(regions.features.astype(np.float32)))
    torch.testing.assert_close(tensors.positions, torch.from_numpy(regions.position))
    assert tensors.labels.dtype == torch.long and tensors.mask.tolist() == [True, True, False]
    assert (tensors.num_boxes, tensors.width, tensors.height) == (2, 32, 24)


def test_zero_detection_images_and_float16(tmp_path, fixture_set):
    instances, image_dir, detector = fixture_set
    records = load_detection_data(instances).images[:3]
    out = tmp_path / "empty.h5"
    extract_features(detector, records, image_dir, out, RegionSelection(4, min_score=1.0), batch_size=2, float16=True)
    with RegionFeatureReader(out) as reader:
        assert len(reader) == 3
        regions = reader.get(records[0].id)
        assert regions.num_boxes == 0 and regions.features.dtype == np.float16
        assert regions.features.shape == (4, detector.feature_dim)
        assert (regions.labels == -1).all() and (regions.scores == 0).all() and (regions.features == 0).all()
        assert (regions.width, regions.height) == (64, 64)


def test_sharded_extraction_equals_unsharded(tmp_path, fixture_set):
    instances, image_dir, detector = fixture_set
    records = load_detection_data(instances).images
    selection = RegionSelection(6, min_score=0.0, nms_iou=0.3)
    batch = 2
    extract_features(detector, records, image_dir, tmp_path / "full.h5", selection, batch)
    shards = []
    for i in range(3):
        shards.append(tmp_path / f"shard-{i}-of-3.h5")
        part = records[shard_slice(len(records), i, 3, batch)]
        extract_features(detector, part, image_dir, shards[-1], selection, batch)
    combine_shards(list(reversed(shards)), tmp_path / "combined.h5")
    with h5py.File(tmp_path / "full.h5", "r") as a, h5py.File(tmp_path / "combined.h5", "r") as b:
        assert set(a.keys()) == set(b.keys())
        assert a["num_boxes"][:].sum() > 0
        for name in a.keys():
            np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)
        for key in ("label_names", "num_regions", "feature_dim"):
            assert a.attrs[key] == b.attrs[key]


def copy_with_one_broken_image(records, image_dir, tmp_path, broken: int):
    """A copy of ``records``' images in ``tmp_path/images`` where image ``broken`` is not an image."""
    broken_dir = tmp_path / "images"
    broken_dir.mkdir()
    for r in records:
        (broken_dir / r.file_name).write_bytes((image_dir / r.file_name).read_bytes())
    (broken_dir / records[broken].file_name).write_bytes(b"garbage")
    return broken_dir


def test_bad_image_stops_or_is_listed(tmp_path, fixture_set):
    instances, image_dir, detector = fixture_set
    records = load_detection_data(instances).images[:3]
    broken_dir = copy_with_one_broken_image(records, image_dir, tmp_path, broken=1)
    out = tmp_path / "f.h5"
    with pytest.raises(BadImageError, match=records[1].file_name):
        extract_features(detector, records, broken_dir, out, RegionSelection(4), batch_size=2)
    assert not out.exists()
    summary = extract_features(detector, records, broken_dir, out, RegionSelection(4), batch_size=2, skip_bad_images=True)
    assert summary.skipped == 1
    assert skipped_list_path(out).read_text().split() == [records[1].file_name]
    with RegionFeatureReader(out) as reader:
        assert list(reader.image_ids) == [records[0].id, records[2].id]
        assert reader.skipped_images == [records[1].file_name]


def test_saved_detector_reloads_with_identical_regions(tmp_path, fixture_set):
    instances, image_dir, detector = fixture_set
    weights = tmp_path / "det.safetensors"
    json_copy = save_detector(detector.model, detector.arch, weights)
    assert json.loads(json_copy.read_text())["label_names"] == detector.label_names
    reloaded = load_region_detector(weights, device="cpu")
    image = [load_rgb(image_dir / load_detection_data(instances).images[0].file_name)]
    a, b = detector.detect(image, RegionSelection(5, 0.0)), reloaded.detect(image, RegionSelection(5, 0.0))
    np.testing.assert_array_equal(a[0].features, b[0].features)
    np.testing.assert_array_equal(a[0].boxes, b[0].boxes)


def test_grid_sample_pooler_matches_torchvision_roi_align():
    from torchvision.ops import roi_align

    from tbkin.features.detector import GridSampleRoIPool

    torch.manual_seed(0)
    fmap = torch.randn(2, 5, 16, 16)
    boxes = [torch.tensor([[3.0, 5.0, 60.0, 40.0], [0.0, 0.0, 127.0, 127.0]]), torch.tensor([[10.0, 20.0, 30.0, 90.0]])]
    ours = GridSampleRoIPool(output_size=7, stride=8, sampling_ratio=2)({"0": fmap}, boxes, [(128, 128)] * 2)
    reference = roi_align(fmap, boxes, output_size=7, spatial_scale=1 / 8, sampling_ratio=2, aligned=True)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


def test_skipped_image_ids_are_recorded_and_survive_combining(tmp_path, fixture_set):
    instances, image_dir, detector = fixture_set
    records = load_detection_data(instances).images[:4]
    broken_dir = copy_with_one_broken_image(records, image_dir, tmp_path, broken=2)
    shards = [tmp_path / "shard-0.h5", tmp_path / "shard-1.h5"]
    for shard, part in zip(shards, (records[:2], records[2:])):
        extract_features(detector, part, broken_dir, shard, RegionSelection(4), batch_size=2, skip_bad_images=True)
    combine_shards(shards, tmp_path / "all.h5")
    with RegionFeatureReader(tmp_path / "all.h5") as reader:
        assert reader.skipped_image_ids == {records[2].id}
        assert reader.skipped_images == [records[2].file_name]
    assert skipped_list_path(tmp_path / "all.h5").read_text().split() == [records[2].file_name]
    # a rerun that reads every image leaves no stale list of skipped images behind
    (broken_dir / records[2].file_name).write_bytes((image_dir / records[2].file_name).read_bytes())
    extract_features(detector, records[2:], broken_dir, shards[1], RegionSelection(4), batch_size=2, skip_bad_images=True)
    assert not skipped_list_path(shards[1]).exists()


def test_extraction_removes_partials_left_by_a_killed_run(tmp_path, fixture_set):
    instances, image_dir, detector = fixture_set
    out = tmp_path / "shard-0-of-2.h5"
    stale = tmp_path / ".shard-0-of-2.h5.u8k2_x.h5.partial"   # named as RegionFeatureWriter names its temporary
    other = tmp_path / ".shard-1-of-2.h5.a1b2c3.h5.partial"   # another shard's job: not ours to remove
    stale.write_bytes(b"\x89HDF half written")
    other.write_bytes(b"\x89HDF half written")
    extract_features(detector, load_detection_data(instances).images[:2], image_dir, out, RegionSelection(4), batch_size=2)
    assert out.is_file() and not stale.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, other.name])
