import numpy as np

from svdtrt.media.video import read_mp4, save_frames, write_mp4


def test_mp4_round_trip_keeps_frames_and_size(tmp_path):
    rng = np.random.default_rng(0)
    # smooth frames, so H.264 at high quality reproduces them closely
    base = np.linspace(0, 1, 48 * 64 * 3, dtype=np.float32).reshape(48, 64, 3)
    frames = np.stack([np.roll(base, i * 4, axis=1) for i in range(5)]) * 0.8 + 0.1
    write_mp4(frames + rng.normal(0, 0.001, frames.shape).astype(np.float32), tmp_path / "c.mp4", fps=7)
    decoded = read_mp4(tmp_path / "c.mp4")
    assert decoded.shape == (5, 48, 64, 3)
    assert np.abs(decoded / 255.0 - frames).mean() < 0.02


def test_odd_sizes_are_padded_to_even(tmp_path):
    write_mp4(np.full((2, 33, 35, 3), 0.5, np.float32), tmp_path / "odd.mp4")
    assert read_mp4(tmp_path / "odd.mp4").shape == (2, 34, 36, 3)


def test_save_frames_writes_float32_npy_without_temp_files(tmp_path):
    frames = np.random.default_rng(1).random((3, 8, 8, 3), dtype=np.float32)
    save_frames(frames, tmp_path / "f.npy")
    assert np.array_equal(np.load(tmp_path / "f.npy", allow_pickle=False), frames)
    assert [p.name for p in tmp_path.iterdir()] == ["f.npy"]
