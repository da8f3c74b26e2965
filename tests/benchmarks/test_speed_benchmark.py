"""benchmarks/speed.py on tiny synthetic data: the replayed network calls are the step's calls, and
the result file has every column."""
import json
import os

import pytest



@pytest.fixture(scope="module")
def speed(load_benchmark):
    return load_benchmark("speed")


def test_speed_benchmark_smoke(speed, load_benchmark, tmp_path, one_thread, monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")  # glibc's default: recorded, changes nothing
    monkeypatch.setenv("SEMI3D_UNRELATED", "1")  # not recorded
    out = speed.main(["--synthetic", "--repeats", "1", "--warmup", "0", "--name", "smoke",
                      "--results", str(tmp_path)])
    saved = json.loads((tmp_path / "smoke.json").read_text())
    assert saved["results"] == json.loads(json.dumps(out["results"]))
    mn, sup = out["results"]
    assert set(mn["phases"]) == {"stage1", "stage2_net2d", "stage2_net3d"} and set(sup["phases"]) == {"train"}
    # stage 1 trains both models on labelled patches; a 2D-student step runs the 3D teacher without grad
    assert [c.split("(")[0] for c in mn["phases"]["stage1"]["net_calls"]] == ["UNet3D", "UNet2D"]
    assert mn["phases"]["stage2_net2d"]["net_calls"][0].startswith("UNet3D(no grad)")
    assert mn["phases"]["stage2_net2d"]["n_unlabelled"] > 0
    for r in (mn, sup):
        for v in r["phases"].values():
            assert v["step_s"] > 0 and v["raw_s"] > 0 and v["data_s"] > 0 and v["peak_mem_mb"] > 0
        assert r["inference"]["seconds"] > 0
    assert "| overhead |" in (tmp_path / "smoke.md").read_text()
    # the environment variables that change speed are part of how it ran
    # (others may be set: importing scikit-learn, which MONAI does when it is installed, sets KMP_*)
    env = saved["machine"]["env"]
    assert env["MALLOC_TRIM_THRESHOLD_"] == "131072" and "SEMI3D_UNRELATED" not in env
    assert all(k.startswith(load_benchmark("benchlib").SPEED_ENV) and os.environ[k] == v for k, v in env.items())
    assert "MALLOC_TRIM_THRESHOLD_=131072" in (tmp_path / "smoke.md").read_text()
