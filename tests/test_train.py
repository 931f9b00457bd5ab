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
    for source in (weights, str(tmp_path / "release")):  # the release folder is the UNet only
        model = build_model(make_cfg(tiny_sd, "MODEL.WEIGHTS", source)).eval()
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
    args = _args(
        tiny_sd, out, "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "VIS_PERIOD", "0"
    )
    cfg = train_net.setup(args)
    trainer = DiffewSTrainer(cfg)
    trainer.train()
    from detectron2.utils import comm

    state = trainer.model.module.unet.state_dict()
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest()
    with open(os.path.join(out, f"weights_rank{comm.get_rank()}.txt"), "w") as f:
        f.write(digest)


@pytest.mark.slow
def test_two_process_data_parallel_keeps_replicas_identical(tiny_sd, tmp_path):
    launch(_ddp_worker, 2, dist_url="auto", args=(tiny_sd, str(tmp_path)))
    digests = [open(tmp_path / f"weights_rank{r}.txt").read() for r in (0, 1)]
    assert digests[0] == digests[1]
    initial = torch.load(tmp_path / "model_0000001.pth", weights_only=False)["iteration"]
    assert initial == 1


def test_eval_only_needs_weights_or_explicit_permission(tiny_sd, tmp_path):
    """--eval-only loads MODEL.WEIGHTS; empty weights are an error unless ALLOW_UNTRAINED."""
    from detectron2.modeling import build_model

    from diffews import DiffewSCheckpointer
    from diffews.checkpoint import UntrainedModelError

    model = build_model(make_cfg(tiny_sd))
    torch.manual_seed(5)
    with torch.no_grad():
        for p in model.unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    DiffewSCheckpointer(model, save_dir=str(tmp_path)).save("trained")
    weights = str(tmp_path / "trained.pth")
    args = _args(tiny_sd, tmp_path / "eval", "MODEL.WEIGHTS", weights, "TEST.FSS.NUM_EPISODES", "3")
    args.eval_only = True
    trained = train_net.main(args)["fss"]
    assert trained["num_episodes"] == 3
    args.opts[-3:] = ["", "TEST.FSS.NUM_EPISODES", "3"]  # MODEL.WEIGHTS ""
    with pytest.raises(UntrainedModelError, match="MODEL.DIFFEWS.ALLOW_UNTRAINED True"):
        train_net.main(args)
    args.opts += ["MODEL.DIFFEWS.ALLOW_UNTRAINED", "True"]
    untrained = train_net.main(args)["fss"]
    assert untrained["mIoU"] != trained["mIoU"]  # the weights were really loaded above


class _Recorder:
    """Hooks on the UNet's inputs and outputs and on ``vae.encode``, independent of how DiffewS
    organises its own code: every VAE encode (input, posterior mean and std, every ``sample()`` and
    ``mode()`` call) and every UNet call (sample, timestep, text context, output)."""

    def __init__(self, model):
        self.encodes, self.unet_calls = [], []
        encode = model.vae.encode

        def recording_encode(x, *args, **kwargs):
            out = encode(x, *args, **kwargs)
            dist = out.latent_dist
            rec = {"input": x.detach().clone(), "mean": dist.mean.detach().clone(),
                   "std": dist.std.detach().clone(), "samples": [], "modes": 0}
            sample, mode = dist.sample, dist.mode

            def recording_sample(generator=None):
                z = sample(generator)
                rec["samples"].append(z.detach().clone())
                return z

            def recording_mode():
                rec["modes"] += 1
                return mode()

            dist.sample, dist.mode = recording_sample, recording_mode
            self.encodes.append(rec)
            return out

        model.vae.encode = recording_encode

        def pre(module, args, kwargs):
            names = ("sample", "timestep", "encoder_hidden_states")
            values = {n: (args[i] if len(args) > i else kwargs[n]) for i, n in enumerate(names)}
            self.unet_calls.append({n: torch.as_tensor(v).detach().clone()
                                    for n, v in values.items()})

        def post(module, args, kwargs, output):
            out = output.sample if hasattr(output, "sample") else output[0]
            self.unet_calls[-1]["output"] = out

        model.unet.register_forward_pre_hook(pre, with_kwargs=True)
        model.unet.register_forward_hook(post, with_kwargs=True)

    def encoded(self, rows: torch.Tensor, what: str):
        """For each row of ``rows`` (N, 3, H, W), the (encode call, index) that encoded it."""
        found = []
        for row in rows:
            hits = [(c, i) for c, rec in enumerate(self.encodes)
                    for i in range(len(rec["input"])) if torch.equal(rec["input"][i], row)]
            assert hits, f"the VAE never encoded {what} as expected"
            found.append(hits[0])
        return found

    def unet_input(self, latent: torch.Tensor, what: str):
        """The UNet call whose input holds ``latent`` (C, h, w) as a row, and the row index."""
        for call in self.unet_calls:
            for i, row in enumerate(call["sample"]):
                if row.shape == latent.shape and torch.equal(row, latent):
                    return call, i
        raise AssertionError(f"no UNet call received {what}")


def test_training_loss_samples_posterior_with_pm1_masks_77_tokens_and_t1(tiny_sd):
    """docs/METHOD.md section 4, checked from the outside: images enter the VAE in [-1, 1] and masks
    as -1/+1 (255 = ignore counts as background), every training latent is a posterior SAMPLE (not
    the mean) times the VAE's scaling factor, both UNet passes get t = 1 and the 77-token padded
    empty prompt, and the loss is the MSE between the query pass's output and minus the sampled
    query-mask latent."""
    from detectron2.modeling import build_model
    from transformers import CLIPTextModel, CLIPTokenizer

    model = build_model(make_cfg(tiny_sd)).train()
    rec = _Recorder(model)
    episode = make_episode(2, seed=21)
    episode["sem_seg"][:5] = 255
    torch.manual_seed(0)
    loss = model([episode])["loss_mask_latent"]

    scale = model.vae.config.scaling_factor
    as_image = lambda x: x.float() / 127.5 - 1.0  # noqa: E731
    as_mask = lambda m: ((m > 0).float() * 2 - 1)[:, None].expand(-1, 3, -1, -1)  # noqa: E731
    query = rec.encoded(as_image(episode["image"])[None], "the query image")
    supports = rec.encoded(as_image(episode["support_images"]), "the support images")
    masks = rec.encoded(as_mask(episode["support_masks"]), "the support masks as -1/+1")
    target = rec.encoded(as_mask((episode["sem_seg"] == 1)[None]), "the query mask as -1/+1")
    for c, _ in masks + target:
        assert set(rec.encodes[c]["input"].unique().tolist()) <= {-1.0, 1.0}
    for r in rec.encodes:  # the posterior is sampled once per encode, its mode never taken
        assert len(r["samples"]) == 1 and r["modes"] == 0

    def z(where):
        c, i = where
        return rec.encodes[c]["samples"][0][i] * scale

    c, i = query[0]
    assert (rec.encodes[c]["samples"][0][i] - rec.encodes[c]["mean"][i]).abs().max() > 1e-3
    query_call, qi = rec.unet_input(z(query[0]), "the sampled query latent")
    for k in range(2):
        rec.unet_input(torch.cat([z(supports[k]), z(masks[k])]), f"support {k}'s sampled latents")

    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(tiny_sd, subfolder="text_encoder").eval()
    ids = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids
    assert ids.shape == (1, 77)
    with torch.no_grad():
        prompt = encoder(ids)[0][0]
    assert len(rec.unet_calls) >= 2
    for call in rec.unet_calls:
        assert call["timestep"].flatten().tolist() == [1] * call["timestep"].numel()
        assert call["encoder_hidden_states"].shape[1] == 77
        for ctx in call["encoder_hidden_states"]:
            torch.testing.assert_close(ctx, prompt, atol=1e-5, rtol=1e-5)
    expected = torch.mean((query_call["output"][qi].float() + z(target[0]).float()) ** 2)
    torch.testing.assert_close(loss.detach(), expected, atol=1e-6, rtol=1e-5)

    model.eval()  # inference: the 2-token prompt and no posterior sampling
    rec.encodes.clear(), rec.unet_calls.clear()
    with torch.no_grad():
        model([episode])
    assert all(not r["samples"] for r in rec.encodes)
    assert all(call["encoder_hidden_states"].shape[1] == 2 for call in rec.unet_calls)

