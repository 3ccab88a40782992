"""The nightly job's pages without Ray: the course view made from what earlier nights wrote, and the
engagement model a night runs by default (or the sentence saying why none ran)."""

from __future__ import annotations

import sys
import urllib.parse
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from emotibatch import nightly, schema
from emotibatch.config import ExtractConfig
from emotibatch.extract.output import Output, video_key
from emotibatch.inference import registry

sys.path.insert(0, str(Path(__file__).parents[1] / "report"))
from pages import Page

CLASSES = ("Happiness", "Neutral")


def _config(out: Path, engagement: str = nightly.AUTO_ENGAGEMENT, **extract) -> nightly.NightlyConfig:
    return nightly.NightlyConfig(
        ExtractConfig(inputs=(str(out / "in"),), output=str(out), **extract), engagement_model=engagement
    )


def _lecture(root: Output, night: date, video_id: str, happy: float, engagement: float | None) -> None:
    row = {
        "video_id": video_id,
        "source_uri": f"/in/{video_id}",
        "night": night,
        "run_id": "r",
        "duration_s": 3000.0,
        "faces": 100,
        "share_Happiness": happy,
        "share_Neutral": 1 - happy,
        "engagement_mean": engagement,
    }
    path = root.join(f"date={night}", "summaries", "lectures", f"{video_key(video_id)}.parquet")
    root.write_table(path, pa.Table.from_pylist([row], schema=schema.lecture_schema(CLASSES)))


def _processed(root: Output, rows: list[tuple[str, str, date, str | None]]) -> None:
    start = datetime(2026, 3, 1, tzinfo=timezone.utc)
    table = [
        {
            "source_uri": f"/in/{v}",
            "size": 1,
            "stamp": "s",
            "video_id": v,
            "status": status,
            "error": error,
            "night": night,
            "run_id": "r",
            "finished_at": start + timedelta(minutes=i),
        }
        for i, (v, status, night, error) in enumerate(rows)
    ]
    root.write_table(
        root.join("_nightly", "processed.parquet"), pa.Table.from_pylist(table, schema.NIGHTLY_PROCESSED)
    )


def test_the_course_view_holds_every_night_by_course_with_failed_and_waiting_lectures(tmp_path: Path) -> None:
    root = Output(str(tmp_path))
    d1, d2, d3 = date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)
    _lecture(root, d1, "course1/week1.mp4", 0.25, 0.5)
    _lecture(root, d1, "course1/week2.mp4", 0.5, None)
    _lecture(root, d3, "course1/week2.mp4", 0.75, 0.75)  # processed again (re-uploaded): the latest wins
    _lecture(root, d2, "intro.mp4", 1.0, None)
    _processed(
        root,
        [
            ("course1/week1.mp4", "ok", d1, None),
            ("course1/week2.mp4", "ok", d1, None),
            ("course2/broken.mp4", "failed", d1, "cannot decode"),
            ("intro.mp4", "ok", d2, None),
            ("course2/fixed.mp4", "failed", d2, "cannot decode"),
            ("course2/fixed.mp4", "failed", d3, "still broken"),  # the latest try's error
            ("course1/week2.mp4", "ok", d3, None),
        ],
    )
    waiting = (nightly.Waiting("/in/course2/new.mp4", "no completion marker .done yet", "course2/new.mp4"),)
    plan = nightly.NightPlan(_config(tmp_path), d3, (), waiting, 3, None, None, None)
    written = nightly.write_course_view(plan)
    assert written == str(tmp_path / "courses.html")

    page = Page.read(written)
    courses = {s.text[0]: s for s in page.sections.values()}
    assert list(courses) == ["Course (no folder)", "Course course1", "Course course2"]
    one = {r["lecture"]: r for r in courses["Course course1"].rows(0)}
    assert [(r["night"], r["status"], r["engagement"], r["Happiness"]) for r in one.values()] == [
        ("2026-03-01", "ok", "0.50", "25%"),
        ("2026-03-03", "ok", "0.75", "75%"),
    ]
    two = {r["lecture"]: (r["status"], r["night"], r["note"]) for r in courses["Course course2"].rows(0)}
    assert two == {
        "course2/broken.mp4": ("failed", "2026-03-01", "cannot decode"),
        "course2/fixed.mp4": ("failed", "2026-03-03", "still broken"),
        "course2/new.mp4": ("waiting", "-", "no completion marker .done yet"),
    }
    assert courses["Course (no folder)"].says("where no engagement model scored the lecture")
    # Links to each lecture's page of its latest night, relative to OUT (percent-encoded: keys hold %).
    links = [urllib.parse.unquote(u) for u in page.urls if not u.startswith("#")]
    assert links == [
        f"date={night}/reports/{video_key(v)}.html"
        for night, v in [(d2, "intro.mp4"), (d1, "course1/week1.mp4"), (d3, "course1/week2.mp4")]
    ]


def test_engagement_runs_by_default_when_the_head_can_be_had(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = []
    monkeypatch.setattr(nightly, "load_engagement", lambda model, *_: asked.append(model) or "head")
    assert nightly.choose_engagement(_config(tmp_path)) == ("head", None)
    assert asked == [nightly.PRETRAINED_ENGAGEMENT]


@pytest.mark.parametrize(
    ("problem", "said"),
    [
        (registry.ModelUnavailableError("not cached and cannot be downloaded"), "cannot be downloaded"),
        (ValueError("needs enet_b0 features (1280-d)"), "needs enet_b0 features"),
    ],
)
def test_a_night_without_the_head_says_why_no_engagement_model_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, problem: Exception, said: str
) -> None:
    def unavailable(*_):
        raise problem

    monkeypatch.setattr(nightly, "load_engagement", unavailable)
    engagement, note = nightly.choose_engagement(_config(tmp_path))
    assert engagement is None and note.startswith("No engagement model ran: ") and said in note
    off, note = nightly.choose_engagement(_config(tmp_path, nightly.NO_ENGAGEMENT))
    assert off is None and note == "No engagement model ran: --engagement-model none."
    _, note = nightly.choose_engagement(_config(tmp_path, features_dtype="none"))
    assert "--features-dtype none" in note
    with pytest.raises(type(problem)):  # a model the user named must load
        nightly.choose_engagement(_config(tmp_path, "engagement_single_attention"))


def test_a_night_that_ran_without_engagement_says_so() -> None:
    lecture = nightly.Lecture("/in/a.mp4", "a.mp4", 1, "s")
    result = nightly.NightResult(
        date(2026, 3, 1),
        "r",
        "/out",
        "/out/date=2026-03-01",
        (nightly.LectureOutcome(lecture, "ok"),),
        (),
        0,
        engagement_note="No engagement model ran: --engagement-model none.",
        courses_file="/out/courses.html",
    )
    assert result.describe()[1:] == [
        "No engagement model ran: --engagement-model none.",
        "course view: /out/courses.html",
    ]
