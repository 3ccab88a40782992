"""Still images on S3 (moto, through the proxy): listed beside a video as inputs of their own, probed and
decoded from one copy in the node-local cache, a corrupt one failing alone with its message."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import s3fs
from conftest import options
from s3proxy import FaultProxy

from emotibatch.config import Sampling
from emotibatch.extract.decode import IMAGE_FPS, decode_segment, plan_video
from emotibatch.io.sources import list_sources
from emotibatch.testing import samples

W, H = 160, 96
FACE = samples.FaceTrack(32, (48, 32), (48, 32), first=0, last=0)


def test_remote_images_are_inputs_read_once_through_the_cache(
    s3: s3fs.S3FileSystem, bucket: str, proxy: FaultProxy, video_cache: Path, tmp_path: Path
) -> None:
    root = f"{bucket}/images-{uuid.uuid4().hex[:8]}"
    photo = samples.make_image(tmp_path / "photo.png", faces=[FACE], width=W, height=H)
    s3.put_file(str(photo), f"{root}/in/photo.png")
    s3.pipe(f"{root}/in/broken.jpg", b"not an image\n" * 10)
    s3.pipe(f"{root}/in/talk.mp4", b"x")
    opts = options(proxy.endpoint)

    sources = list_sources([f"s3://{root}/in/"], storage_options=opts)
    assert [(s.video_id, s.kind, s.uri) for s in sources] == [
        ("broken", "image", f"s3://{root}/in/broken.jpg"),
        ("photo", "image", f"s3://{root}/in/photo.png"),
        ("talk", "video", f"s3://{root}/in/talk.mp4"),
    ]
    broken, image = sources[:2]

    job = plan_video(image, Sampling("every", 10), 1.0, storage_options=opts)
    assert job.error is None and job.indices == (0,)
    info = job.info
    assert (info.fps, info.frame_count, info.width, info.height) == (IMAGE_FPS, 1, W, H)
    assert info.size_bytes == photo.stat().st_size
    ((index, timestamp, frame),) = decode_segment(image, info, job.segments[0], storage_options=opts)
    assert (index, timestamp) == (0, 0.0)
    np.testing.assert_array_equal(frame, samples.render_frame([FACE], 0, width=W, height=H))
    # Probing and decoding share one copy: the object was fetched once.
    assert proxy.get_bytes[f"/{root}/in/photo.png"] == photo.stat().st_size
    assert any(p.name != ".lock" and not p.name.endswith(".lock") for p in video_cache.iterdir())

    failed = plan_video(broken, Sampling(), None, storage_options=opts)
    assert failed.info is None
    assert failed.error.startswith(f"could not decode the image s3://{root}/in/broken.jpg: it is corrupt")
