"""The shared build mechanism of the tiny and smol models: atomic, cached, rebuilt when damaged."""

from __future__ import annotations

import json

import pytest

from helpers.model_build import STAMP_FILE, cached_build, file_digests, is_current


def _writer(calls: list[str], content: str = "weights"):
    def build(staging):
        calls.append(content)
        (staging / "config.json").write_text("{}")
        (staging / "model.bin").write_text(content)
    return build


def test_a_second_call_with_the_same_fingerprint_does_not_build_again(tmp_path):
    calls: list[str] = []
    target = tmp_path / "model"
    assert cached_build(target, "v1", _writer(calls)) == target.resolve()
    cached_build(target, "v1", _writer(calls))
    assert calls == ["weights"]
    assert json.loads((target / STAMP_FILE).read_text()) == {"fingerprint": "v1", "files": file_digests(target)}


def test_a_new_fingerprint_or_a_damaged_file_rebuilds(tmp_path):
    calls: list[str] = []
    target = tmp_path / "model"
    cached_build(target, "v1", _writer(calls))
    cached_build(target, "v2", _writer(calls, "new recipe"))
    assert (target / "model.bin").read_text() == "new recipe"
    (target / "model.bin").write_text("new rec")        # truncated, e.g. by a full disk
    assert not is_current(target, "v2")
    cached_build(target, "v2", _writer(calls, "new recipe"))
    (target / "config.json").unlink()                    # deleted by hand
    cached_build(target, "v2", _writer(calls, "new recipe"))
    assert len(calls) == 4 and is_current(target, "v2")


def test_an_interrupted_build_leaves_the_old_model_and_no_staging_folder(tmp_path):
    target = tmp_path / "model"
    cached_build(target, "v1", _writer([]))
    before = file_digests(target)

    def interrupted(staging):
        (staging / "model.bin").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_build(target, "v2", interrupted)
    assert file_digests(target) == before and is_current(target, "v1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_stamp_that_is_not_json_counts_as_no_build(tmp_path):
    target = tmp_path / "model"
    cached_build(target, "v1", _writer([]))
    (target / STAMP_FILE).write_text("{not json")
    assert not is_current(target, "v1")
