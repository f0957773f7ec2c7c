"""fit under torchrun (DDP, gloo on CPU, 2 processes) matches one process on the same global batches."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from torch import nn
    from tlutils.distributed import dist_info, init_distributed, is_main_process
    from tlutils.train import evaluate, fit

    device = init_distributed()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (512,), generator=g)
    x = torch.randn(512, 8, generator=g) + y[:, None].float()
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hist = fit(model, (x, y), epochs=3, batch_size=64, optimizer=opt, device=device, seed=7, progress=False)
    res = evaluate(model, (x, y), device=device)
    if is_main_process():
        json.dump({"world": dist_info()[1], "train_loss": hist.last("train_loss"), "loss": res["loss"],
                   "acc": res["acc"], "w": model[0].weight.flatten()[:5].tolist()}, open(sys.argv[1], "w"))
''')


def _run(cmd, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TLUTILS_DEVICE": "cpu"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.skipif(sys.platform == "win32", reason="gloo via torchrun is tested on Linux/macOS")
def test_ddp_two_processes_match_one(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    _run([sys.executable, str(script), str(tmp_path / "one.json")], tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    _run(torchrun + [str(script), str(tmp_path / "two.json")], tmp_path)
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert one["world"] == 1 and two["world"] == 2
    # same data order, global batch and averaged gradients: equal up to float reduction order
    assert two["train_loss"] == pytest.approx(one["train_loss"], abs=1e-4)
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-4)
    assert two["acc"] == pytest.approx(one["acc"], abs=1 / 512)
    assert two["w"] == pytest.approx(one["w"], abs=1e-4)
