"""Real videos through PyAV: timestamps from PTS, chaining and looping."""

from __future__ import annotations

from cloudtutor.video import chained, read_frames


def test_timestamps_come_from_the_stream(data_root):
    frames = list(read_frames(str(data_root / "video/camvid-0016E5-480x360-15fps.mp4")))
    assert len(frames) == 101
    times = [ms for ms, _ in frames]
    assert times[0] == 0 and all(b > a for a, b in zip(times, times[1:]))
    assert abs(times[-1] - 100 * 1000 / 15) <= 2  # 15 fps
    assert frames[0][1].shape == (360, 480, 3)


def test_chained_videos_share_one_increasing_clock(data_root):
    videos = [data_root / "video/highway-solidWhiteRight-960x540-25fps.mp4", data_root / "video/camvid-0016E5-480x360-15fps.mp4"]
    frames = list(chained(videos))
    assert len(frames) == 221 + 101
    assert all(b.pts_ms > a.pts_ms for a, b in zip(frames, frames[1:]))
    switch = frames[221]
    assert switch.rgb.shape == (360, 480, 3) and frames[220].rgb.shape == (540, 960, 3)
    assert 0 < switch.pts_ms - frames[220].pts_ms <= 41  # one frame interval of the first video


def test_duration_loops_until_reached(data_root):
    video = data_root / "video/camvid-0016E5-480x360-15fps.mp4"  # 6.7 s
    frames = list(chained([video], duration_s=15.0))
    assert frames[-1].pts_ms < 15_000 and frames[-1].pts_ms > 14_800
    assert len(frames) == 225  # 15 s at 15 fps
    assert [f.index for f in frames] == list(range(len(frames)))
