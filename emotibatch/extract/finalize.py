"""The per-video pass: check a video's staged frames, link its faces into tracks, commit its rows.

It runs as a Ray task per video, as soon as the video's last sampled frame is staged. Every sampled
frame must be there, once (a retried task may have staged a piece twice); a video with a decode error
or a missing frame gets a failed row and no faces. A sampled frame that did not decode (staged as
decode.LOST_FRAME) gets no faces row and counts in `frames_lost`; the tracker treats it as never
sampled, so tracks are the same however the video was split. A video whose container claims other
frames than decode gets a `warning`. Committing writes `faces/` first, then the video's
`videos/` row, then drops its staging (output.Output.commit_video), so a rerun redoes exactly the videos
without an ok row. The pass is idempotent: Ray retries a task whose worker died, also after its commit,
and the retry finds the staging gone; so a video whose ok row this run already wrote is left as it is.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from emotibatch import schema
from emotibatch.extract.decode import LOST_FRAME, VideoJob, reencode_hint
from emotibatch.extract.output import Output
from emotibatch.extract.track import assign_tracks, count_tracks


def finalize_video(job: VideoJob, output: Output, faces_schema: pa.Schema, run_id: str) -> dict:
    """Check, track and commit one video; return its videos row."""
    video_id = job.source.video_id
    committed = output.committed_row(video_id)
    if committed is not None and committed["status"] == "ok" and committed["run_id"] == run_id:
        return committed
    row = _video_row(job, run_id)
    if job.error:
        return _commit(output, job, None, {**row, "status": "failed", "error": job.error})
    staged = output.read_staged(video_id) if job.indices else None
    errors = set() if staged is None else set(staged["error"].to_pylist()) - {None, LOST_FRAME}
    if errors:
        return _commit(output, job, None, {**row, "status": "failed", "error": min(errors)})
    if staged is not None:
        staged = _unique_frames(staged)
    got = set() if staged is None else set(staged["frame_index"].to_pylist())
    missing = sorted(set(job.indices) - got)
    if missing:
        error = f"{len(missing)} sampled frames were not processed (first: {missing[0]}); run the job again"
        return _commit(output, job, None, {**row, "status": "failed", "error": error})
    lost = 0
    if staged is not None:
        is_lost = pc.fill_null(pc.equal(staged["error"], LOST_FRAME), False)
        lost = pc.sum(is_lost).as_py() or 0
        staged = staged.filter(pc.invert(is_lost))
    faces = _faces_table(job, staged, faces_schema)
    row |= {
        "status": "ok",
        "warning": _warning(job, lost),
        "frames_sampled": len(job.indices) - lost,
        "frames_lost": lost,
        # A still image lasts no time: it has no rate.
        "sampled_fps": (len(job.indices) - lost) / job.info.duration_s if job.info.duration_s else None,
        "faces": len(faces),
        "tracks": count_tracks(faces["track_id"].to_numpy()),
        "decode_s": float(pc.sum(staged["decode_s"]).as_py() or 0.0) if staged is not None else 0.0,
        "infer_s": float(pc.sum(staged["infer_s"]).as_py() or 0.0) if staged is not None else 0.0,
    }
    return _commit(output, job, faces, row)


def _unique_frames(staged: pa.Table) -> pa.Table:
    """Frames sorted by index, each once (pieces staged twice by a retried task hold the same frame)."""
    staged = staged.sort_by("frame_index")
    index = staged["frame_index"].to_numpy()
    first = np.concatenate([[True], index[1:] != index[:-1]])
    return staged.filter(pa.array(first))


def _faces_table(job: VideoJob, staged: pa.Table | None, faces_schema: pa.Schema) -> pa.Table:
    if staged is None or not len(staged):
        return faces_schema.empty_table()
    staged = staged.combine_chunks()
    counts = pc.list_value_length(staged["bbox"]).to_numpy(zero_copy_only=False)
    frame_index = np.repeat(staged["frame_index"].to_numpy(), counts)
    face_index = np.concatenate([np.arange(c, dtype=np.int32) for c in counts])
    bbox = pc.list_flatten(staged["bbox"])
    tracks = assign_tracks(
        frame_index, schema.as_matrix(bbox), sampled_frames=staged["frame_index"].to_numpy()
    )
    probs = pc.list_flatten(staged["emotion_probs"])
    classes = np.array(schema.Provenance.from_schema(faces_schema).classes)
    labels = classes[schema.as_matrix(probs).argmax(axis=1)]
    n = len(frame_index)
    columns = {
        "video_id": pa.array([job.source.video_id] * n, pa.string()),
        "source_uri": pa.array([job.source.source_uri] * n, pa.string()),
        "frame_index": pa.array(frame_index, pa.int64()),
        "timestamp_s": pa.array(job.info.times(frame_index), pa.float64()),
        "face_index": pa.array(face_index, pa.int32()),
        "track_id": pa.array(tracks, pa.int64()),
        "bbox": bbox,
        "det_score": pc.list_flatten(staged["det_score"]),
        "landmarks": pc.list_flatten(staged["landmarks"]),
        "emotion": pa.array(labels.tolist(), pa.string()),
        "emotion_probs": probs,
        "valence": pc.list_flatten(staged["valence"]),
        "arousal": pc.list_flatten(staged["arousal"]),
    }
    if "features" in faces_schema.names:
        columns["features"] = pc.list_flatten(staged["features"])
    return pa.table(columns).cast(faces_schema)


def _video_row(job: VideoJob, run_id: str) -> dict:
    info = job.info
    return {
        "video_id": job.source.video_id,
        "source_uri": job.source.source_uri,
        "kind": job.source.kind,
        "status": "failed",
        "error": None,
        "fps": info.fps if info else None,
        "frame_count": info.frame_count if info else None,
        "frame_count_claimed": info.frame_count_claimed if info else None,
        "duration_s": info.duration_s if info else None,
        "width": info.width if info else None,
        "height": info.height if info else None,
        "warning": None,
        "frames_sampled": 0,
        "frames_lost": 0,
        "sampling": job.sampling.label(),
        "sampled_fps": None,
        "faces": 0,
        "tracks": 0,
        "decode_s": 0.0,
        "infer_s": 0.0,
        "run_id": run_id,
        **dict(job.source.extra),
    }


def _warning(job: VideoJob, lost: int) -> str | None:
    """What a person should know about an ok video whose container is not what it claims."""
    info, notes = job.info, []
    if info.frame_count_claimed is not None and info.frame_count_claimed != info.frame_count:
        notes.append(
            f"the container claims {info.frame_count_claimed} frames but {info.frame_count} can be decoded"
            " (an edit list hides frames, or the file is cut or damaged); rows cover the decodable frames"
        )
    if lost:
        notes.append(f"{lost} sampled frames did not decode and have no rows")
    return "; ".join([*notes, reencode_hint(job.source.source_uri)]) if notes else None


def _commit(output: Output, job: VideoJob, faces: pa.Table | None, row: dict) -> dict:
    output.commit_video(job.source.video_id, faces, pa.Table.from_pylist([row], schema=_row_schema(row)))
    return row


def _row_schema(row: dict) -> pa.Schema:
    base = set(schema.VIDEOS_BASE.names)
    extra = pa.Table.from_pylist([{k: v for k, v in row.items() if k not in base}]).schema
    return schema.videos_schema(extra if len(extra) else None)
