# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SINE training through the real tools/train_net.py entry (a tiny random SINE on the synthetic
benchmark, configs/quick_schedules/sine_tiny_instant_test.yaml): steps, checkpoints without the
frozen encoder, the encoder record, resume, TensorBoard, the final FSS evaluation; the
original's optimizer groups and DeepSpeed learning-rate schedule."""

import glob
import json
import os
import sys

import pytest
import torch
from detectron2.engine import HookBase, default_argument_parser
from detectron2.modeling import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import train_net  # noqa: E402

from diffews.checkpoint import load_inference_weights  # noqa: E402
from diffews.config import build_config  # noqa: E402
from diffews.engine import DiffewSTrainer  # noqa: E402
from diffews.engine.solver import (WarmupDecayParamScheduler, build_lr_scheduler,  # noqa: E402
                                   build_optimizer)
from diffews.modeling.sine.weights import encoder_fingerprint  # noqa: E402

INSTANT = os.path.join(ROOT, "configs", "quick_schedules", "sine_tiny_instant_test.yaml")
ENCODER = "image_encoder.encoder."


@pytest.fixture(autouse=True)
def one_thread():
    """A tiny model on shared cores: two threads' synchronisation costs more than it gains."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _args(out, *extra, resume=False):
    argv = ["--config-file", INSTANT, *(["--resume"] if resume else []), "OUTPUT_DIR", str(out),
            *map(str, extra)]
    return default_argument_parser().parse_args(argv)


def _trainer(out, *extra):
    return DiffewSTrainer(train_net.setup(_args(out, *extra)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished instant run through train_net.main: (output folder, its last trainer)."""
    out = tmp_path_factory.mktemp("sine_run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_net.main(_args(out))
    finally:
        torch.set_num_threads(threads)
    return out


def test_train_net_writes_checkpoints_without_the_encoder(trained):
    out = trained
    metrics = [json.loads(line) for line in open(out / "metrics.json")]
    assert any("loss_ce_ins" in m and "loss_dice_1" in m and "lr" in m for m in metrics)
    assert glob.glob(str(out / "events.out.tfevents.*"))
    assert (out / "fss_results.json").exists()  # the FSS loop ran on the synthetic test set
    ckpt = torch.load(out / "model_final.pth", weights_only=False)
    assert ckpt["iteration"] == 3
    assert not any(k.startswith(ENCODER) for k in ckpt["model"])
    assert any(k.startswith("transformer_decoder.") for k in ckpt["model"])
    assert "criterion.empty_weight" in ckpt["model"]
    assert ckpt["sine_encoder"]["weights"] == "sine_encoder.pth"
    # the random encoder, written once, is the one the record names
    written = torch.load(out / "sine_encoder.pth", weights_only=True)
    cfg = build_config(INSTANT, ["MODEL.WEIGHTS", str(out / "model_final.pth")])
    model = build_model(cfg)
    model.image_encoder.encoder.load_state_dict(written)
    assert encoder_fingerprint(model.image_encoder.encoder) == ckpt["sine_encoder"]["fingerprint"]
    # the optimizer holds no frozen parameter: its state is the trainable part's
    state = ckpt["trainer"]["_trainer"]["optimizer"]["state"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(state) == len(trainable)


def test_inference_loads_the_recorded_encoder(trained, tmp_path):
    """MODEL.WEIGHTS = our checkpoint, MODEL.SINE.ENCODER.WEIGHTS empty: the encoder comes from
    the record (sine_encoder.pth beside it), whatever random encoder the model was built with."""
    path = str(trained / "model_final.pth")
    cfg = build_config(INSTANT, ["MODEL.WEIGHTS", path])
    torch.manual_seed(123)
    model = build_model(cfg).eval()
    load_inference_weights(model, cfg)
    ckpt = torch.load(path, weights_only=False)
    assert encoder_fingerprint(model.image_encoder.encoder) == ckpt["sine_encoder"]["fingerprint"]
    for key, value in ckpt["model"].items():
        if not key.startswith("criterion."):
            assert torch.equal(model.state_dict()[key], value), key
    # without the encoder file the mismatch is named
    moved = tmp_path / "alone.pth"
    moved.write_bytes(open(path, "rb").read())
    model = build_model(build_config(INSTANT, ["MODEL.WEIGHTS", str(moved)])).eval()
    with pytest.raises(ValueError, match="trained with the frozen encoder sine_encoder.pth"):
        load_inference_weights(model, build_config(INSTANT, ["MODEL.WEIGHTS", str(moved)]))


class _Kill(HookBase):
    def before_step(self):
        if self.trainer.iter == 3:
            raise KeyboardInterrupt("simulated kill")


NO_EVAL = ("DATASETS.TEST", "()", "VIS_PERIOD", 0)


def test_resume_continues_at_same_iteration_lr_and_encoder(tmp_path):
    killed = _trainer(tmp_path, *NO_EVAL)
    killed.resume_or_load(resume=False)
    killed.register_hooks([_Kill()])
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    encoder_file = tmp_path / "sine_encoder.pth"
    written = os.path.getmtime(encoder_file)
    # SEED 7: another random encoder at build; the checkpoint's record restores the run's
    resumed = _trainer(tmp_path, "SEED", 7, *NO_EVAL)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2 and resumed.scheduler.last_epoch == 2
    # iteration 2 of WARMUP_ITERS 2: DeepSpeed's gamma(1) = 1 / 2 of the base LR
    base = resumed.cfg.SOLVER.BASE_LR
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * base, rel=1e-6)
    saved = torch.load(tmp_path / "model_0000001.pth", weights_only=False)
    for k, v in resumed.model.state_dict().items():
        if not k.startswith(ENCODER):
            torch.testing.assert_close(v, saved["model"][k])
    vit = resumed.model.image_encoder.encoder
    assert encoder_fingerprint(vit) == saved["sine_encoder"]["fingerprint"]
    resumed.train()
    assert resumed.iter == resumed.max_iter and (tmp_path / "model_final.pth").exists()
    assert os.path.getmtime(encoder_file) == written  # stored once per run


def test_encoder_from_a_file_is_named_not_copied(tmp_path):
    cfg = build_config(INSTANT, [])
    torch.manual_seed(5)
    vit = build_model(cfg).image_encoder.encoder
    dinov2 = tmp_path / "dinov2_tiny.pth"
    torch.save(vit.state_dict(), dinov2)
    out = tmp_path / "run"
    trainer = _trainer(out, "MODEL.SINE.ENCODER.WEIGHTS", str(dinov2), "SOLVER.MAX_ITER", 2,
                       *NO_EVAL)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert not (out / "sine_encoder.pth").exists()
    record = torch.load(out / "model_final.pth", weights_only=False)["sine_encoder"]
    assert record == {"weights": str(dinov2), "fingerprint": encoder_fingerprint(vit)}
    # another encoder file in the config: the recorded one is restored on resume
    torch.save({k: v + 1 for k, v in vit.state_dict().items()}, tmp_path / "other.pth")
    resumed = _trainer(out, "MODEL.SINE.ENCODER.WEIGHTS", str(tmp_path / "other.pth"),
                       "SOLVER.MAX_ITER", 2, *NO_EVAL)
    resumed.resume_or_load(resume=True)
    assert encoder_fingerprint(resumed.model.image_encoder.encoder) == record["fingerprint"]
    os.remove(dinov2)  # now neither the model's encoder nor the recorded file is the one
    again = _trainer(out, "MODEL.SINE.ENCODER.WEIGHTS", str(tmp_path / "other.pth"),
                     "SOLVER.MAX_ITER", 2, *NO_EVAL)
    with pytest.raises(ValueError, match=f"fingerprint {record['fingerprint']}"):
        again.resume_or_load(resume=True)


def test_optimizer_groups_follow_the_original():
    """Weight decay 0 for torch's LayerNorm and nn.Embedding parameters, 0.05 for the rest
    (detectron2's channel LayerNorm of the neck included); no frozen parameter."""
    cfg = build_config(INSTANT, [])
    model = build_model(cfg).train()
    opt = build_optimizer(cfg, model)
    wd = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[i] for i in wd) == sorted(n for n, p in model.named_parameters()
                                                 if p.requires_grad)
    by_name = {names[i]: w for i, w in wd.items()}
    assert by_name["transformer_decoder.query_feat.weight"] == 0.0
    assert by_name["transformer_decoder.neg_class_embed.weight"] == 0.0
    assert by_name["transformer_decoder.decoder_norm.weight"] == 0.0
    assert by_name["transformer_decoder.decoder_norm.bias"] == 0.0
    assert by_name["image_encoder.neck.1.weight"] == 0.05  # detectron2 LayerNorm: decayed
    assert by_name["transformer_decoder.mask_feat_layer.1.weight"] == 0.05
    assert by_name["transformer_decoder.temp"] == 0.05
    assert by_name["image_encoder.neck.0.weight"] == 0.05
    assert all(g["lr"] == cfg.SOLVER.BASE_LR for g in opt.param_groups)


def test_lr_schedule_is_deepspeeds_warmup_decay():
    """DeepSpeed 0.11.0 WarmupDecayLR as the engine steps it: update 0 at the optimizer's LR,
    update k >= 1 at gamma(k - 1): t / 100 during the warmup, then linear to 0 at 50000."""
    sched = WarmupDecayParamScheduler(100, 50000)
    at = {k: sched(k / 50000) for k in (0, 1, 2, 51, 100, 101, 25050, 50000)}
    assert at[0] == 1.0 and at[1] == 0.0 and at[2] == pytest.approx(0.01)
    assert at[51] == pytest.approx(0.5) and at[100] == pytest.approx(0.99)
    assert at[101] == pytest.approx(1.0)
    assert at[25050] == pytest.approx((50000 - 25049) / 49900)
    assert at[50000] == pytest.approx(1 / 49900)
    cfg = build_config(INSTANT, ["SOLVER.MAX_ITER", 10, "SOLVER.WARMUP_ITERS", 4])
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    lr_sched = build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"] / cfg.SOLVER.BASE_LR)
        opt.step()
        lr_sched.step()
    expected = [1.0, 0.0, 0.25, 0.5, 0.75, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6]
    assert lrs == pytest.approx(expected)
