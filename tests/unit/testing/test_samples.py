"""Generated inputs (emotibatch.testing.samples): faces move on the stand-in detector's stride, and what
cannot be drawn as asked is refused."""

from __future__ import annotations

import pytest

from emotibatch.testing.samples import FaceTrack, render_frame


def test_face_tracks_snap_to_the_stride_and_are_validated() -> None:
    track = FaceTrack(32, (16, 16), (64, 16), first=10, last=13)
    assert [track.center(i) for i in (9, 10, 11, 12, 13, 14)] == [
        None,
        (16, 16),
        (32, 16),
        (48, 16),
        (64, 16),
        None,
    ]
    with pytest.raises(ValueError, match="multiples of side/2 = 16"):
        FaceTrack(32, (20, 16), (64, 16), first=0, last=9)
    with pytest.raises(ValueError, match="side must be one of"):
        FaceTrack(24, (12, 12), (12, 12), first=0, last=9)
    # At frame 99 the face spans rows 48-80, over the index stamp in the bottom 8 rows of a 72-row frame.
    low = FaceTrack(32, (16, 16), (144, 64), first=0, last=99)
    with pytest.raises(ValueError, match="covers the stamp"):
        render_frame((low,), 99, width=160, height=72, stamp=True)
