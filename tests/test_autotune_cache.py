"""The disk cache of autotune choices: its file, its key, and the launch path that uses it
(no GPU: the autotuned kernel is a stand-in that records how it was called)."""

import json

import pytest
import triton

from fastunet.kernels import _utils, autotune_cache

CONFIGS = [
    triton.Config(dict(BLOCK_M=64, BLOCK_K=32), num_warps=4, num_stages=3),
    triton.Config(dict(BLOCK_M=128, BLOCK_K=64), num_warps=4, num_stages=4),
]
FIELDS = dict(kernel="k", source="abc", device="NVIDIA H200", triton="3.6.0", key=[64, 0, 7, True, "torch.bfloat16"])


class FakeTensor:
    dtype = "torch.bfloat16"
    device = "cuda:0"


class FakeJIT:
    """Stands in for a JITFunction: ``fn[grid](...)`` records a forced launch."""

    __name__ = "fake_kernel"
    arg_names = ["x_ptr", "C", "SIZE_CLASS", "FLAG", "BLOCK_M", "BLOCK_K"]
    cache_key = "source-hash"

    def __init__(self, calls):
        self.calls = calls

    def __getitem__(self, grid):
        return lambda *args, **kw: self.calls.append(("forced", args, kw))


class FakeAutotuner:
    """Stands in for triton.autotune's Autotuner: ``kernel[grid](...)`` 'benchmarks' and picks
    ``winner``."""

    keys = ["C", "SIZE_CLASS", "FLAG"]
    configs = CONFIGS

    def __init__(self, winner, benchmarks=True):
        self.calls = []
        self.fn = FakeJIT(self.calls)
        self.winner = winner
        self.benchmarks = benchmarks  # False: one config was left after pruning, nothing timed

    def __getitem__(self, grid):
        def run(*args, **kw):
            self.calls.append(("tuned", args, kw))
            self.best_config = self.winner
            if self.benchmarks:
                self.configs_timings = {c: [0.5 if c is self.winner else 0.9] for c in CONFIGS}
        return run


@pytest.fixture
def gpu_like(monkeypatch, tmp_path):
    """Autotuning on, no interpreter, a device name, the cache in tmp_path, no choices of
    earlier tests in memory."""
    monkeypatch.setattr(_utils, "INTERPRET", False)
    monkeypatch.setattr(_utils, "AUTOTUNE", True)
    monkeypatch.setattr(_utils, "device_name", lambda device: "NVIDIA H200")
    monkeypatch.setattr(_utils, "_CHOSEN", {})
    monkeypatch.setenv("FASTUNET_AUTOTUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _launch(kernel, c=64, size_class=10):
    return _utils.launch(kernel, (1,), (FakeTensor(), c, size_class), dict(FLAG=True), cache=True)


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTUNET_AUTOTUNE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert autotune_cache.cache_dir() == tmp_path / "xdg" / "fastunet" / "autotune"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert autotune_cache.cache_dir() == tmp_path / "home" / ".cache" / "fastunet" / "autotune"
    monkeypatch.setenv("FASTUNET_AUTOTUNE_CACHE", str(tmp_path / "mine"))
    assert autotune_cache.cache_dir() == tmp_path / "mine"
    for off in ("0", "off", "OFF", "false", "no"):
        monkeypatch.setenv("FASTUNET_AUTOTUNE_CACHE", off)
        assert autotune_cache.cache_dir() is None


def test_store_then_load_round_trip_and_atomic_file(tmp_path):
    path = autotune_cache.store(tmp_path, FIELDS, CONFIGS[1], {"a": 0.5})
    assert path.exists() and path.parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    data = json.loads(path.read_text())
    assert data["config"] == dict(kwargs=dict(BLOCK_M=128, BLOCK_K=64), num_warps=4, num_stages=4)
    assert data["key"]["device"] == "NVIDIA H200"
    assert autotune_cache.load(tmp_path, FIELDS, CONFIGS) is CONFIGS[1]


@pytest.mark.parametrize("field, value", [("device", "NVIDIA H100 80GB HBM3"), ("triton", "3.9.0"),
                                          ("source", "other"), ("key", [64, 0, 8, True, "torch.bfloat16"])])
def test_any_key_field_changes_the_entry(tmp_path, field, value):
    """Another device name, triton version, kernel source, or size class: not the same entry."""
    autotune_cache.store(tmp_path, FIELDS, CONFIGS[1])
    other = dict(FIELDS, **{field: value})
    assert autotune_cache.entry_path(tmp_path, other) != autotune_cache.entry_path(tmp_path, FIELDS)
    assert autotune_cache.load(tmp_path, other, CONFIGS) is None


def test_unusable_entries_are_ignored(tmp_path):
    path = autotune_cache.entry_path(tmp_path, FIELDS)
    assert autotune_cache.load(tmp_path, FIELDS, CONFIGS) is None  # no file
    tmp_path.mkdir(exist_ok=True)
    path.write_text("{not json")
    assert autotune_cache.load(tmp_path, FIELDS, CONFIGS) is None
    autotune_cache.store(tmp_path, FIELDS, triton.Config(dict(BLOCK_M=32, BLOCK_K=16), num_warps=2, num_stages=2))
    assert autotune_cache.load(tmp_path, FIELDS, CONFIGS) is None  # not one of the kernel's configs
    assert autotune_cache.load(None, FIELDS, CONFIGS) is None and autotune_cache.store(None, FIELDS, CONFIGS[0]) is None


def test_unwritable_folder_is_not_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert autotune_cache.store(blocker / "sub", FIELDS, CONFIGS[0]) is None


def test_second_process_reuses_the_choice_without_tuning(gpu_like):
    first = FakeAutotuner(winner=CONFIGS[1])
    assert _launch(first) is CONFIGS[1]
    assert [c[0] for c in first.calls] == ["tuned"]
    [entry] = list(gpu_like.iterdir())
    assert json.loads(entry.read_text())["timings_ms"] == {str(CONFIGS[0]): 0.9, str(CONFIGS[1]): 0.5}
    assert _launch(first) is CONFIGS[1]  # same process: no second tuning
    assert [c[0] for c in first.calls] == ["tuned", "forced"]

    _utils._CHOSEN.clear()  # a new process: only the disk remembers
    second = FakeAutotuner(winner=CONFIGS[0])
    assert _launch(second) is CONFIGS[1]
    assert [c[0] for c in second.calls] == ["forced"]
    _, args, kw = second.calls[0]
    assert kw == dict(FLAG=True, BLOCK_M=128, BLOCK_K=64, num_warps=4, num_stages=4)


def test_timings_of_an_earlier_key_are_not_stored(gpu_like):
    kernel = FakeAutotuner(winner=CONFIGS[0])
    _launch(kernel, c=64)
    kernel.benchmarks = False  # the next key: pruned to one config, so the old timings remain
    _launch(kernel, c=128)
    entries = [json.loads(p.read_text()) for p in gpu_like.iterdir()]
    assert sorted("timings_ms" in e for e in entries) == [False, True]


def test_other_size_class_or_channels_tune_again(gpu_like):
    kernel = FakeAutotuner(winner=CONFIGS[0])
    _launch(kernel, c=64, size_class=10)
    _launch(kernel, c=64, size_class=4)
    _launch(kernel, c=128, size_class=10)
    assert [c[0] for c in kernel.calls] == ["tuned"] * 3
    assert len(list(gpu_like.iterdir())) == 3


@pytest.mark.parametrize("setting", ["interpreter", "autotune_off", "cache_off", "not_asked"])
def test_cache_not_used(gpu_like, monkeypatch, setting):
    """Under the interpreter or with FASTUNET_AUTOTUNE=0 the plain JIT function runs one config
    (the interpreter's, or the one ``choose`` gives: the model's first), the autotuner never;
    with the cache switched off, or for a launcher that does not ask for it, the plain
    autotuned launch. No file in any case."""
    if setting == "interpreter":
        monkeypatch.setattr(_utils, "INTERPRET", True)
    elif setting == "autotune_off":
        monkeypatch.setattr(_utils, "AUTOTUNE", False)
    elif setting == "cache_off":
        monkeypatch.setenv("FASTUNET_AUTOTUNE_CACHE", "0")
    kernel = FakeAutotuner(winner=CONFIGS[1])
    for _ in range(2):
        ran = _utils.launch(kernel, (1,), (FakeTensor(), 64, 10), dict(FLAG=True), cache=setting != "not_asked",
                            choose=lambda: CONFIGS[1])
    direct = setting in ("interpreter", "autotune_off")
    assert [c[0] for c in kernel.calls] == ["forced", "forced"] if direct else ["tuned", "tuned"]
    if direct:  # the interpreter: the kernel's first (its one interpreter config); untuned: choose()
        assert ran is (CONFIGS[0] if setting == "interpreter" else CONFIGS[1])
    assert not gpu_like.exists() or not any(gpu_like.iterdir())


def test_key_is_the_autotuners_key_plus_device_and_versions(monkeypatch):
    monkeypatch.setattr(_utils, "device_name", lambda device: "NVIDIA H200")
    fields = _utils.tuning_fields(FakeAutotuner(CONFIGS[0]), (FakeTensor(), 64, 10), dict(FLAG=False))
    assert fields == dict(kernel="fake_kernel", source="source-hash", device="NVIDIA H200",
                          triton=triton.__version__, key=[64, 10, False, "torch.bfloat16"])


def test_kernels_with_a_disk_cache_have_a_size_class_in_their_key():
    from fastunet.kernels import conv, conv_head, head, upconv

    for kernel in (conv.conv3x3_kernel, upconv.upconv2x2_kernel, head.head_kernel, conv_head.conv3x3_head_kernel):
        assert "SIZE_CLASS" in kernel.keys, kernel.fn.__name__
    assert "site-packages" not in str(autotune_cache.cache_dir() or "")


def test_size_class_groups_sizes_by_powers_of_four():
    assert _utils.size_class(1) == 0 and _utils.size_class(0) == 0
    assert _utils.size_class(8 * 570 * 570) == _utils.size_class(2 * 1050 * 1050)  # both ~2.5 Mpixel
    assert _utils.size_class(8 * 30 * 30) < _utils.size_class(8 * 66 * 66) < _utils.size_class(8 * 570 * 570)
    classes = [_utils.size_class(4**k) for k in range(12)]
    assert classes == sorted(set(classes))  # every factor 4 is a new class
