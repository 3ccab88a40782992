"""What the report tests know about their generated lecture (fixtures are in conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from emotibatch.testing.samples import FaceTrack

FPS = 25.0
# A 2 s 640x360 video; --fps 5 samples frames 0, 5, ..., 45.
LECTURE_TRACKS = (
    FaceTrack(64, (96, 96), (160, 96), first=0, last=49),
    FaceTrack(32, (400, 64), (400, 128), first=10, last=40),
    FaceTrack(16, (560, 280), (560, 280), first=20, last=49),
)
SECRET = "hunter2-secret"  # a storage option of the recorded run: must never reach a report


@dataclass(frozen=True)
class Lecture:
    out: Path  # the extract output
    video: Path  # the video with LECTURE_TRACKS
