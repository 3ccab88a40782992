"""FaceDetector: known positions with the stand-in detector, and equality with insightface 2.1's SCRFD."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest

from emotibatch.inference import detect
from emotibatch.inference.detect import FaceDetector
from emotibatch.testing import standins

KPS = np.array(standins.KEYPOINT_OFFSETS, np.float32)
# The base tolerance, the one the others follow from: what the same float32 SCRFD graph's outputs (scores,
# and distances in strides) may differ by under another onnxruntime build, CPU family or the CUDA code path.
HEAD_ATOL = 1e-4
EPS32 = float(np.finfo(np.float32).eps)


def position_atol(frame: np.ndarray, input_size: int = 640) -> float:
    """What box and keypoint coordinates (source pixels) may differ by: each is an anchor centre plus a
    distance times its stride, divided by the letterbox scale, so |dx| <= HEAD_ATOL * 32 (the largest stride)
    / scale, plus float32 rounding of a coordinate as large as the frame (a few eps of it, each side)."""
    height, width = frame.shape[:2]
    scale = min(input_size / height, input_size / width)
    return HEAD_ATOL * max(detect.STRIDES) / scale + 4 * EPS32 * max(height, width)


def frame_with_faces(
    size: tuple[int, int], faces: list[tuple[int, int, int]], level: int = 255
) -> np.ndarray:
    """A black (height, width) frame with stand-in faces (cx, cy, side) painted at `level`."""
    frame = np.zeros((*size, 3), np.uint8)
    for cx, cy, side in faces:
        standins.draw_face(frame, (cx, cy), side)
        if level != 255:
            frame[frame == 255] = level
    return frame


def test_drawn_faces_are_found_where_drawn_at_every_letterbox_scale(scrfd_path: Path) -> None:
    detector = FaceDetector.load(str(scrfd_path), device="cpu")
    # (frame size, faces in source pixels). 1280x720 is letterboxed at scale 1/2 and 1920x1080 at 1/3, so
    # sides and centres are the detector's (16/32/64 px on multiples of 8/16/32) times 2 or 3.
    cases = [
        ((480, 640), [(320, 256, 64), (96, 64, 32), (600, 440, 16)]),
        ((720, 1280), [(256, 192, 64), (640, 384, 128), (1024, 512, 32)]),
        ((1080, 1920), [(960, 576, 192), (288, 96, 48)]),
        ((640, 480), [(256, 320, 64)]),
        ((200, 300), []),
    ]
    results = detector.detect([frame_with_faces(size, faces) for size, faces in cases])
    assert len(results) == len(cases)
    for (_, faces), found in zip(cases, results):
        assert len(found) == len(faces)
        expected = sorted((cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2) for cx, cy, s in faces)
        order = np.lexsort(found.boxes.T[::-1])
        np.testing.assert_allclose(
            found.boxes[order], np.array(expected, np.float32).reshape(-1, 4), atol=1e-3
        )
        for box, kps in zip(found.boxes, found.kps):
            centre = (box[:2] + box[2:]) / 2
            stride = (box[2] - box[0]) / 2  # the square's side is two strides
            np.testing.assert_allclose(kps, centre + KPS * stride, atol=1e-3)
        assert (found.scores > 0.9).all() and (np.diff(found.scores) <= 0).all()
        assert found.boxes.dtype == found.scores.dtype == found.kps.dtype == np.float32


def test_scores_are_sorted_and_threshold_applies(scrfd_path: Path) -> None:
    # Grey squares contrast less with the background, so they score lower than white ones.
    frame = frame_with_faces((480, 640), [(160, 160, 64)])
    standins.draw_face(frame, (480, 320), 64)
    frame[288:352, 448:512] = 215
    found = FaceDetector.load(str(scrfd_path), device="cpu").detect([frame])[0]
    assert len(found) == 2 and found.scores[0] > found.scores[1] > 0.5
    np.testing.assert_allclose(found.boxes[0], [128, 128, 192, 192])
    strict = FaceDetector.load(str(scrfd_path), device="cpu", det_thresh=float(found.scores[1]) + 1e-3)
    assert len(strict.detect([frame])[0]) == 1


def reference_frames() -> list[np.ndarray]:
    """Frames of several sizes and aspect ratios, with and without faces, some at awkward scales.

    Faces are placed on the detector's anchor grid and mapped back through the letterbox scale, so most
    are found; at non-integer scales their edges blur and scores spread out.
    """
    rng = np.random.default_rng(7)
    frames = []
    for height, width in [
        (720, 1280),
        (480, 640),
        (640, 480),
        (1080, 1920),
        (300, 1000),
        (96, 160),
        (1000, 300),
    ]:
        scale = min(640 / width, 640 / height)
        frame = np.zeros((height, width, 3), np.uint8)
        for _ in range(5):
            side = int(rng.choice(standins.FACE_SIDES))
            step = side // 2
            cx = int(rng.integers(1, max(2, int(width * scale) // step - 1))) * step
            cy = int(rng.integers(1, max(2, int(height * scale) // step - 1))) * step
            standins.draw_face(frame, (round(cx / scale), round(cy / scale)), round(side / scale))
            frame[frame == 255] = int(rng.integers(200, 256))
        frames.append(frame)
    frames.append(rng.integers(0, 256, (360, 640, 3), dtype=np.uint8))
    frames.append(np.zeros((200, 200, 3), np.uint8))
    return frames


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fixture", "path_of"), [("scrfd_path", "cpu"), ("scrfd_batched_path", "cpu"), ("scrfd_path", "cuda")]
)
def test_equals_insightface_scrfd(request: pytest.FixtureRequest, fixture: str, path_of: str) -> None:
    scrfd = pytest.importorskip("insightface.model_zoo.scrfd")
    path = str(request.getfixturevalue(fixture))
    ref = scrfd.SCRFD(path)
    ref.prepare(-1)
    if path_of == "cuda":
        request.getfixturevalue("cuda_code_path")
    ours = FaceDetector.load(path, device="auto" if path_of == "cuda" else "cpu", batch_size=4)
    assert ours.batch_size == 4, "the graph should have been made batched"
    assert ours.runner.device == path_of
    frames = reference_frames()
    found = ours.detect(frames)
    total = 0
    for frame, got in zip(frames, found):
        det, kps = ref.detect(np.ascontiguousarray(frame[..., ::-1]), input_size=(640, 640))
        assert len(got) == len(det)
        total += len(det)
        atol = position_atol(frame)
        np.testing.assert_allclose(got.boxes, det[:, :4], atol=atol, rtol=0)
        np.testing.assert_allclose(got.scores, det[:, 4], atol=HEAD_ATOL, rtol=0)  # graph outputs as they are
        np.testing.assert_allclose(got.kps, kps.reshape(-1, 5, 2), atol=atol, rtol=0)
    assert total >= 10, "the frames should hold faces, or equality proves little"


@pytest.mark.slow
def test_frames_per_call_default_to_the_device(request: pytest.FixtureRequest, scrfd_path: Path) -> None:
    assert FaceDetector.load(str(scrfd_path), device="cpu").batch_size == 4
    assert FaceDetector.load(str(scrfd_path), device="cpu", batch_size=7).batch_size == 7
    request.getfixturevalue("cuda_code_path")
    detector = FaceDetector.load(str(scrfd_path), device="auto")
    assert detector.batch_size == 16
    found = detector.detect([frame_with_faces((480, 640), [(320, 256, 64)])] * 20)
    assert [len(f) for f in found] == [1] * 20


def test_a_batched_graph_that_disagrees_falls_back_to_per_frame(
    scrfd_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rewrite = detect.make_batch_dynamic

    def wrong(model: onnx.ModelProto) -> onnx.ModelProto:
        edited = rewrite(model)
        gain = next(t for t in edited.graph.initializer if t.name == "gain")
        gain.CopyFrom(onnx.numpy_helper.from_array(np.array(3.0, np.float32), "gain"))
        return edited

    monkeypatch.setattr(detect, "make_batch_dynamic", wrong)
    with caplog.at_level(logging.WARNING):
        detector = FaceDetector.load(str(scrfd_path), device="cpu", batch_size=8)
    assert detector.batch_size == 1
    assert "disagrees with per-frame runs" in caplog.text
    found = detector.detect([frame_with_faces((480, 640), [(320, 256, 64)])] * 3)
    assert [len(f) for f in found] == [1, 1, 1]


def test_contract_errors_name_the_file(scrfd_path: Path, tmp_path: Path) -> None:
    model = onnx.load(str(scrfd_path))
    del model.graph.output[6:]
    bad = tmp_path / "six_outputs.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(
        ValueError, match=r"six_outputs\.onnx: not an SCRFD-contract detector: expected 9 outputs"
    ):
        FaceDetector.load(str(bad), device="cpu")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match=r"junk\.onnx: not an ONNX model"):
        FaceDetector.load(str(junk), device="cpu")


def test_a_fixed_input_size_wins(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = standins.make_scrfd_model(tmp_path / "fixed.onnx", input_size=(320, 320))
    with caplog.at_level(logging.WARNING):
        detector = FaceDetector.load(str(path), device="cpu", input_size=(640, 640))
    assert detector.input_size == (320, 320) and "fixed input size" in caplog.text
    found = detector.detect([frame_with_faces((640, 640), [(320, 320, 128)])])[0]
    np.testing.assert_allclose(found.boxes, [[256, 256, 384, 384]], atol=1e-3)


@pytest.mark.parametrize(
    ("bad", "expected"),
    [(np.zeros((10, 10), np.uint8), "grayscale"), (np.zeros((10, 10, 3), np.float64), "dtype float64")],
)
def test_bad_frames_name_the_index(scrfd_path: Path, bad: np.ndarray, expected: str) -> None:
    with pytest.raises(ValueError, match=rf"frame 1: .*{expected}"):
        FaceDetector.load(str(scrfd_path), device="cpu").detect([np.zeros((8, 8, 3), np.uint8), bad])
