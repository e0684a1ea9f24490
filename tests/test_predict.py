"""predict on folders: nested folders walked (each real file once, however links lead to it), files streamed in
batches, top-k rows in a CSV, unreadable files listed without stopping the rest (and the exit code 1), EXIF
orientation and alpha handled as in training."""

import csv
import io
import os
import struct
import zlib

import keras
import numpy as np
import pytest
from PIL import Image

from inat_keras.cli import main
from inat_keras.config import ScratchConfig, build_config
from inat_keras.data.decode import BACKGROUND, EXIF_ORIENTATION
from inat_keras.serving import predict
from inat_keras.training.kinds import KINDS


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, make_image_folder, make_tiny_cnn_options, class_names):
    """A CNN that sees where colours are: at 64 px its last block keeps a 2x2 map, so a quarter turn changes its output."""
    root = tmp_path_factory.mktemp("predict")
    data = make_image_folder(root / "data", {"train": 1, "val": 1})
    keras.utils.set_random_seed(3)
    config = build_config(ScratchConfig, {**make_tiny_cnn_options(), "image_size": 64, "batch_norm": True, "activation": "mish"})
    model = KINDS["scratch"].build_model(config, len(class_names))
    path = root / "run" / "model.keras"
    path.parent.mkdir()
    model.save(path)
    return path, data


def quadrants(height, width, split_y, split_x) -> np.ndarray:
    """Four flat colours, boundaries on JPEG block edges: a turned copy encodes to the same blocks."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:split_y, :split_x], image[:split_y, split_x:] = (230, 30, 30), (30, 200, 40)
    image[split_y:, :split_x], image[split_y:, split_x:] = (20, 40, 220), (240, 220, 30)
    return image


def write_photos(root):
    """photos/ with nested folders, a corrupt file, an RGBA PNG, an EXIF-rotated 800x600 JPEG, a TIFF and
    files predict leaves out; and, outside it, the upright original and its RGB composite for comparison."""
    upright = quadrants(800, 600, 400, 296)  # portrait, as the photo should stand
    (root / "photos" / "b" / "nested" / "deeper").mkdir(parents=True)
    (root / "photos" / "a").mkdir()
    (root / "reference").mkdir()
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored a quarter turn anticlockwise: turn it clockwise to stand upright
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1)))  # 800 wide, 600 high
    stored.save(root / "photos" / "a" / "rotated.jpg", quality=95, subsampling=0, exif=exif)
    stored.save(root / "reference" / "no_exif.jpg", quality=95, subsampling=0)
    Image.fromarray(upright).save(root / "reference" / "upright.jpg", quality=95, subsampling=0)
    rgba = np.zeros((48, 48, 4), np.uint8)
    rgba[..., :3] = quadrants(48, 48, 24, 24)
    rgba[..., 3] = 255
    rgba[:, 24:, 3] = 0  # the right half transparent: its hidden colours must not count
    Image.fromarray(rgba, "RGBA").save(root / "photos" / "b" / "nested" / "deeper" / "cutout.png")
    composite = rgba[..., :3].copy()
    composite[:, 24:] = BACKGROUND
    Image.fromarray(composite).save(root / "reference" / "composite.png")
    Image.fromarray(rgba[..., :3]).save(root / "reference" / "hidden_colours.png")
    (root / "photos" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    Image.fromarray(quadrants(40, 40, 8, 32)).save(root / "photos" / "b" / "scan.tiff")
    Image.fromarray(quadrants(40, 40, 32, 8)).save(root / "photos" / "b" / "nested" / "plain.png")
    (root / "photos" / "notes.txt").write_text("not an image")
    (root / "photos" / "a" / ".hidden.jpg").write_bytes(b"")
    return root / "photos", root / "reference"


def test_predict_a_folder_to_csv(checkpoint, tmp_path, monkeypatch, capsys, class_names):
    model_path, data = checkpoint
    photos, reference = write_photos(tmp_path)
    monkeypatch.setattr(predict, "HEADER_CHUNK", 2)  # several header chunks, errors on their edges
    out = tmp_path / "out.csv"
    code = main(["predict", "--checkpoint", str(model_path), str(photos), "--data-dir", str(data), "--csv", str(out),
                 "--top", "2", "--batch-size", "2"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1  # two files could not be read
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "class_1", "prob_1", "class_2", "prob_2", "error"]
    names = [r["path"][len(str(photos)) + 1 :] for r in rows]
    assert names == ["a/rotated.jpg", "b/broken.jpg", "b/nested/deeper/cutout.png", "b/nested/plain.png", "b/scan.tiff"]
    bad = {name: r["error"] for name, r in zip(names, rows) if r["error"]}
    assert set(bad) == {"b/broken.jpg", "b/scan.tiff"} and "not a supported image format" in bad["b/scan.tiff"]
    for row in (r for r in rows if not r["error"]):
        probs = [float(row["prob_1"]), float(row["prob_2"])]
        assert probs[0] >= probs[1] > 0 and sum(probs) <= 1 + 1e-6
        assert row["class_1"] in class_names and row["class_2"] in class_names and row["class_1"] != row["class_2"]
    assert f"warning: cannot read {photos / 'b' / 'broken.jpg'}:" in captured.err
    assert "2 of 5 file(s) could not be read" in captured.err and "left out 2 hidden or non-image" in captured.err
    assert "3 image(s) predicted" in captured.out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.csv")]  # no temporary CSV left behind


def read_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_folder_with_a_link_loop_is_predicted_once_per_file(checkpoint, tmp_path, caplog):
    model_path, data = checkpoint
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.jpg", "b.png", "sub/c.jpg"]):
        Image.fromarray(quadrants(40, 40, 8 * (i + 1), 16)).save(photos / name)
    os.symlink(".", photos / "sub" / "again")  # a loop: followed blindly, c.jpg is reached ~40 times
    os.symlink(photos / "a.jpg", photos / "alias.jpg")
    out = tmp_path / "out.csv"
    code = main(["predict", "--checkpoint", str(model_path), str(photos), str(photos / "sub" / "c.jpg"),
                 "--data-dir", str(data), "--csv", str(out)])  # fmt: skip
    assert code == 0
    assert [r["path"] for r in read_rows(out)] == [str(photos / name) for name in ("a.jpg", "b.png", "sub/c.jpg")]
    for left_out in ("alias.jpg", "sub/again", "sub/c.jpg: the same file as"):
        assert f"left out {photos / left_out}" in caplog.text


def huge_png(path, width=20000, height=20000):
    """A PNG of a few hundred bytes whose header claims width x height pixels (its IHDR patched, the CRC fixed)."""
    buffer = io.BytesIO()
    Image.fromarray(quadrants(8, 8, 4, 4)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # after the signature (8 bytes), the chunk's length and b"IHDR"
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # the CRC of the chunk's type and 13 data bytes
    path.write_bytes(bytes(data))
    return str(path)


def test_failed_files_are_rows_and_the_exit_code_is_1(checkpoint, tmp_path, capsys):
    model_path, data = checkpoint
    good = tmp_path / "good.jpg"
    Image.fromarray(quadrants(40, 40, 16, 16)).save(good)
    bomb, broken = huge_png(tmp_path / "bomb.png"), tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    out = tmp_path / "out.csv"
    inputs = [bomb, str(good), str(broken), str(tmp_path / "missing.jpg")]
    code = main(["predict", "--checkpoint", str(model_path), *inputs, "--data-dir", str(data), "--csv", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    rows = read_rows(out)
    assert [r["path"] for r in rows] == inputs and [bool(r["error"]) for r in rows] == [True, False, True, True]
    assert rows[0]["error"].startswith("image too large: its header declares 400,000,000 pixels, more than")
    assert err[-1] == f"3 of 4 file(s) could not be read; their rows in {out} hold the reason (exit code 1)"
    from inat_keras.serving.explain import decode_images

    assert decode_images([bomb, str(good)], 32, 3)[0] == [str(good)]  # explain reads images as predict does


def test_an_exif_rotated_photo_is_predicted_upright(checkpoint, tmp_path, class_names):
    model_path, data = checkpoint
    photos, reference = write_photos(tmp_path)
    paths = [photos / "a" / "rotated.jpg", reference / "upright.jpg", reference / "no_exif.jpg", reference / "missing.jpg"]
    readable, unreadable = predict.predict_images(model_path, [str(p) for p in paths], str(data), False, k=len(class_names))
    assert unreadable == [(str(reference / "missing.jpg"), "no such file or folder")]  # listed, not fatal
    rotated, upright, as_stored = (dict(ranked) for _, ranked in readable)

    def distance(a, b):
        return max(abs(a[c] - b[c]) for c in class_names)

    # the same as the upright photo, and far from what the pixels give as they are stored
    assert distance(rotated, upright) < 1e-4 and distance(as_stored, upright) > 1e-3

def test_rgba_is_composited_over_the_background(checkpoint, tmp_path, class_names):
    model_path, data = checkpoint
    photos, reference = write_photos(tmp_path)
    paths = [str(photos / "b" / "nested" / "deeper" / "cutout.png"), str(reference / "composite.png"),
             str(reference / "hidden_colours.png")]  # fmt: skip
    readable, unreadable = predict.predict_images(str(model_path), paths, str(data), False, k=len(class_names))
    assert not unreadable
    cutout, composite, hidden = (dict(ranked) for _, ranked in readable)
    assert max(abs(cutout[c] - composite[c]) for c in class_names) < 1e-5
    assert max(abs(cutout[c] - hidden[c]) for c in class_names) > 1e-4
