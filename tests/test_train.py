# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Training through the real tools/train_net.py entry: steps, checkpoints, resume, export, NaN
guard, gradient checkpointing and 2-process data parallelism (gloo)."""

import glob
import hashlib
import json
import os
import sys

import pytest
import torch
from detectron2.engine import HookBase, default_argument_parser, launch

from conftest import make_cfg, make_episode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import export_unet  # noqa: E402
import train_net  # noqa: E402

from diffews.engine import DiffewSTrainer  # noqa: E402

INSTANT = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_instant_test.yaml")


def _args(tiny_sd, out, *extra, resume=False):
    argv = ["--config-file", INSTANT, *(["--resume"] if resume else []),
            "MODEL.DIFFEWS.PRETRAINED", tiny_sd, "OUTPUT_DIR", str(out), *extra]
    return default_argument_parser().parse_args(argv)


def _trainer(tiny_sd, out, *extra):
    return DiffewSTrainer(train_net.setup(_args(tiny_sd, out, *extra)))


def test_train_net_runs_and_writes_checkpoint_metrics_tensorboard(tiny_sd, tmp_path):
    torch.backends.cuda.matmul.allow_tf32 = False
    train_net.main(_args(tiny_sd, tmp_path))
    assert torch.backends.cuda.matmul.allow_tf32  # SOLVER.ALLOW_TF32, as the reference trains
    assert (tmp_path / "model_final.pth").exists()
    metrics = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert any("total_loss" in m and "lr" in m and "time" in m for m in metrics)
    assert glob.glob(str(tmp_path / "events.out.tfevents.*"))
    ckpt = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert ckpt["iteration"] == 3 and "optimizer" in ckpt["trainer"]["_trainer"]
    assert any("LRScheduler" in k for k in ckpt["trainer"]["hooks"])
    assert not any(k.startswith("vae.") for k in ckpt["model"])


class _Kill(HookBase):
    def before_step(self):
        if self.trainer.iter == 3:
            raise KeyboardInterrupt("simulated kill")


def test_resume_continues_at_same_iteration_and_lr(tiny_sd, tmp_path):
    reference = _trainer(tiny_sd, tmp_path / "ref")
    reference.train()
    lr_at = {it: lr for lr, it in reference.storage.history("lr").values()}

    killed = _trainer(tiny_sd, tmp_path / "run")
    killed.register_hooks([_Kill()])
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    assert sorted(os.listdir(tmp_path / "run")).count("model_0000001.pth") == 1
    resumed = _trainer(tiny_sd, tmp_path / "run")
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    assert resumed.scheduler.last_epoch == 2
    lr = resumed.optimizer.param_groups[0]["lr"]
    assert lr == pytest.approx(lr_at[2], rel=1e-6)
    saved = torch.load(tmp_path / "run" / "model_0000001.pth", weights_only=False)["model"]
    for k, v in resumed.model.state_dict().items():
        torch.testing.assert_close(v, saved[k])
    resumed.train()
    assert resumed.iter == reference.iter and (tmp_path / "run" / "model_final.pth").exists()


def test_exported_unet_round_trip(tiny_sd, tmp_path):
    trainer = _trainer(tiny_sd, tmp_path)
    trainer.train()
    weights = str(tmp_path / "model_final.pth")
    args = export_unet.get_parser().parse_args(
        ["--config-file", INSTANT, "--weights", weights, "--output", str(tmp_path / "release"),
         "--opts", "MODEL.DIFFEWS.PRETRAINED", tiny_sd])
    folder = export_unet.main(args)
    assert os.path.isfile(os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    from detectron2.modeling import build_model

    from diffews import DiffewSCheckpointer

    episode = make_episode(2, seed=4)
    preds = []
    for source in (weights, str(tmp_path / "release")):
        model = build_model(make_cfg(tiny_sd)).eval()
        DiffewSCheckpointer(model).load(source)
        preds.append(model([episode])[0]["pred_image"])
    assert torch.equal(preds[0], preds[1])


def _nan_after(model, iteration_to_break, counter):
    forward = model.forward

    def patched(batched_inputs):
        out = forward(batched_inputs)
        if not model.training:  # the prediction-visualizer hook
            return out
        counter["calls"] += 1
        if counter["calls"] > iteration_to_break:
            out = {k: v * float("nan") for k, v in out.items()}
        return out

    model.forward = patched


def test_nan_loss_stops_with_iteration(tiny_sd, tmp_path):
    trainer = _trainer(tiny_sd, tmp_path)
    _nan_after(trainer.model, 2, {"calls": 0})  # 2 accumulation steps per iteration
    with pytest.raises(FloatingPointError, match="iteration=1"):
        trainer.train()


def test_nan_loss_skip_policy_counts_and_keeps_weights(tiny_sd, tmp_path):
    trainer = _trainer(tiny_sd, tmp_path, "SOLVER.NAN_POLICY", "skip")
    _nan_after(trainer.model, 2, {"calls": 0})
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()  # iterations 1..3 all see NaN after the first update
    assert trainer._trainer.skipped_updates == 3
    after = trainer.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed  # the first, finite update did happen
    assert all(torch.isfinite(v).all() for v in after.values())


def test_gradient_checkpointing_gives_same_gradients(tiny_sd):
    from detectron2.modeling import build_model

    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        model = build_model(make_cfg(tiny_sd, "MODEL.DIFFEWS.GRADIENT_CHECKPOINTING", flag)).train()
        torch.manual_seed(1)
        model([make_episode(2, seed=0)])["loss_mask_latent"].backward()
        grads.append({n: p.grad.clone() for n, p in model.unet.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)


def _ddp_worker(tiny_sd, out):
    args = _args(tiny_sd, out, "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "VIS_PERIOD", "0")
    cfg = train_net.setup(args)
    trainer = DiffewSTrainer(cfg)
    trainer.train()
    from detectron2.utils import comm

    state = trainer.model.module.unet.state_dict()
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest()
    with open(os.path.join(out, f"weights_rank{comm.get_rank()}.txt"), "w") as f:
        f.write(digest)


def test_two_process_data_parallel_keeps_replicas_identical(tiny_sd, tmp_path):
    launch(_ddp_worker, 2, dist_url="auto", args=(tiny_sd, str(tmp_path)))
    digests = [open(tmp_path / f"weights_rank{r}.txt").read() for r in (0, 1)]
    assert digests[0] == digests[1]
    initial = torch.load(tmp_path / "model_0000001.pth", weights_only=False)["iteration"]
    assert initial == 1
