"""ImagiNet's baseline pieces on tiny data: the SelfCon loss against a direct transcription of
equation 1, the network's two views, the calibration head and the batch-norm update."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthdet.detectors.selfcon import (
    CalibrationHead,
    SelfConDetector,
    SelfConNet,
    imaginet_pretraining_loss,
    selfcon_loss,
    update_bn_statistics,
)


def _equation_1(views: torch.Tensor, labels: list[int], tau: float) -> float:
    """ImagiNet's equation 1 written out term by term (sum over anchors i and views w), divided by
    the number of (i, w) anchors that have a positive, as selfcon_loss reports it."""
    n_views, n = views.shape[:2]
    total, anchors = 0.0, 0
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        for w in range(n_views):
            anchors += 1
            inner = 0.0
            for p in positives:
                for w2 in range(n_views):
                    num = math.exp(float(views[w, i] @ views[w2, p]) / tau)
                    den = sum(math.exp(float(views[w, i] @ views[w2, q]) / tau) for q in range(n) if q != i)
                    inner += math.log(num / den)
            total += -inner / (len(positives) * n_views)
    return total / anchors


def test_selfcon_loss_is_equation_1():
    torch.manual_seed(0)
    views = F.normalize(torch.randn(2, 7, 5, dtype=torch.float64), dim=2)
    labels = [0, 0, 1, 1, 1, 2, 0]  # label 2 has no positive: only a negative for the others
    for tau in (0.07, 0.5):
        got = float(selfcon_loss(views, torch.tensor(labels), tau))
        assert got == pytest.approx(_equation_1(views, labels, tau), rel=1e-9)
    assert float(selfcon_loss(views, torch.arange(7))) == 0.0  # nobody has a positive


def test_selfcon_loss_is_lower_when_same_labels_cluster_and_has_gradients():
    torch.manual_seed(1)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    centres = F.normalize(torch.randn(2, 8), dim=1)
    clustered = F.normalize(centres[labels] + 0.05 * torch.randn(6, 8), dim=1)
    spread = F.normalize(torch.randn(6, 8), dim=1)
    loss_clustered = selfcon_loss(torch.stack([clustered, clustered]), labels)
    assert loss_clustered < selfcon_loss(torch.stack([spread, spread]), labels)
    x = torch.randn(2, 6, 8, requires_grad=True)
    selfcon_loss(F.normalize(x, dim=2), labels).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_model_identification_ignores_real_images():
    torch.manual_seed(2)
    views = F.normalize(torch.randn(2, 6, 4), dim=2)
    origin = torch.tensor([0, 0, 1, 1, 1, 1])
    model = torch.tensor([9, 8, 0, 0, 1, 1])
    loss = imaginet_pretraining_loss(views, origin, model)
    other_reals = imaginet_pretraining_loss(views, origin, torch.tensor([0, 1, 0, 0, 1, 1]))
    assert float(loss) == pytest.approx(float(other_reals))
    expected = selfcon_loss(views, origin) + selfcon_loss(views[:, 2:], model[2:])
    assert float(loss) == pytest.approx(float(expected))


def test_the_network_gives_two_unit_views_from_block_2_and_the_final_features():
    torch.manual_seed(0)
    net = SelfConNet(sub_block=2)
    x = torch.randn(4, 3, 16, 16)
    views = net(x)
    assert views.shape == (2, 4, 128)
    assert torch.allclose(views.norm(dim=2), torch.ones(2, 4), atol=1e-5)
    assert net.sub_head[0].in_features == 512 and net.head[0].in_features == 2048
    b = net.backbone
    assert b.layer1(b.act1(b.bn1(b.conv1(x)))).shape[-2:] == (16, 16)  # no early downsampling
    assert net.features(x).shape == (4, 2048)
    imaginet_pretraining_loss(views, torch.tensor([0, 1, 0, 1]), torch.tensor([4, 0, 4, 0])).backward()
    for name, module in (("sub-network", net.sub_head), ("head", net.head), ("block 1", b.layer1),
                         ("block 4", b.layer4)):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name
    # the sub-network sees block 2 only: block 3 and 4 get gradient from H alone
    net.zero_grad()
    net(x)[0].sum().backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in b.layer3.parameters())


def test_calibration_head_classifies_normalised_features():
    torch.manual_seed(0)
    head = CalibrationHead(4)
    features = torch.randn(5, 2048)
    out = head(features)
    assert out.shape == (5, 4) and torch.allclose(head(3.0 * features), out, atol=1e-6)
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "ReLU", "Linear"]
    assert (head.mlp[0].in_features, head.mlp[0].out_features, head.mlp[2].in_features) == (2048, 1024, 1024)
    detector = SelfConDetector(n_models=4)
    x = torch.randn(3, 3, 16, 16)
    detector.eval()
    logits = detector.origin_head(detector.net.features(x))
    assert torch.allclose(detector(x), logits[:, 1] - logits[:, 0])
    assert detector.identify(x).shape == (3, 4)


def test_batch_norm_statistics_are_re_estimated_on_calibration_images_only():
    torch.manual_seed(0)
    net = SelfConNet()
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [torch.randn(4, 3, 16, 16) * 2 + 1 for _ in range(3)]
    seen = update_bn_statistics(net, batches)
    assert seen == 12 and not net.training
    bn = net.backbone.bn1
    conv = torch.cat([net.backbone.conv1(x) for x in batches])
    assert torch.allclose(bn.running_mean, conv.mean(dim=(0, 2, 3)), atol=1e-4)  # the plain average
    assert bn.momentum == 0.1  # restored
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items())  # no weight moved
    with pytest.raises(ValueError, match="no calibration images"):
        update_bn_statistics(net, [])


def test_training_augmentations_follow_the_paper():
    from collections import Counter

    import numpy as np

    from synthdet.imaginet.augment import blur_sigma, train_augment
    from tests.conftest import noise_image

    assert blur_sigma(3) == pytest.approx(0.8) and blur_sigma(7) == pytest.approx(1.4)
    img = noise_image(0, (120, 100))
    counts, n = Counter(), 600
    for k in range(n):
        out, ops = train_augment(img, np.random.default_rng(k))
        assert out.size == (96, 96) and out.mode == "RGB"
        counts.update(op.split("_")[0] for op in ops)
        if not ops:  # nothing but the crop: the pixels are the image's own (no resizing)
            arr, src = np.asarray(out), np.asarray(img)
            assert any((src[t:t + 96, s:s + 96] == arr).all() for t in range(5) for s in range(25))
    degraded = sum(counts[k] for k in ("jpeg", "webp", "blur", "noise"))
    assert 0.44 < degraded / n < 0.56 and min(counts[k] for k in ("jpeg", "webp", "blur", "noise")) > 0.09 * n
    assert 0.28 < counts["rot90"] / n < 0.39 and 0.28 < (counts["hflip"] + counts["vflip"]) / n < 0.39
    small, _ = train_augment(noise_image(1, (40, 60)), np.random.default_rng(0))
    assert small.size == (96, 96)  # reflection-padded, not resized
    a, ops_a = train_augment(img, np.random.default_rng(5))
    b, ops_b = train_augment(img, np.random.default_rng(5))
    assert ops_a == ops_b and np.array_equal(np.asarray(a), np.asarray(b))


def test_calibration_augmentations_follow_the_paper():
    from collections import Counter

    import numpy as np

    from synthdet.imaginet.augment import calibration_augment
    from tests.conftest import noise_image

    img = noise_image(0, (300, 280))
    first, n = Counter(), 600
    for k in range(n):
        out, ops = calibration_augment(img, np.random.default_rng(k))
        assert out.size == (256, 256)
        if ops and ops[0] not in ("rot90", "hflip", "vflip"):
            first[ops[0].split("_")[0]] += 1
            if ops[0] == "resized_crop" and len(ops) > 1 and ops[1].split("_")[0] in ("jpeg", "webp"):
                first["resized_then_compressed"] += 1
    perturbed = sum(first[k] for k in ("jpeg", "webp", "blur", "noise", "resized"))
    assert 0.44 < perturbed / n < 0.56
    assert 0.22 < first["resized"] / perturbed < 0.38  # 30% of the perturbed
    assert 0.35 < first["resized_then_compressed"] / first["resized"] < 0.65


def _baseline_rows(root, n=8):
    """Real and fake images of two families and contents, 40-56 px: a manifest's columns."""
    from tests.conftest import noise_image

    rows = []
    for i in range(n):
        label = i % 2
        path = root / f"{i}.png"
        noise_image(50 + i, (40 + 2 * i, 56 - i)).save(path)
        rows.append({"path": str(path), "label": label, "family": ("gan", "diffusion")[i // 2 % 2] if label else "real",
                     "generator": "g" if label else "real"})
    import pandas as pd

    return pd.DataFrame(rows)


def test_the_baseline_trains_in_two_stages_in_the_one_loop_deterministically(tmp_path, monkeypatch):
    from synthdet.imaginet.baseline import BaselineConfig, SelfConObjective, train_method
    from synthdet.training.scoring import score

    seen = {}  # the weights the finishing stage (stage 2) starts from: stage 1's best epoch
    finish = SelfConObjective.finish

    def spy(self, model, *args, **kwargs):  # noqa: ANN001, ANN202
        seen.update({k: v.clone() for k, v in model.state_dict().items()})
        return finish(self, model, *args, **kwargs)

    monkeypatch.setattr(SelfConObjective, "finish", spy)
    rows = _baseline_rows(tmp_path)
    cfg = BaselineConfig(crop=32, calibration_size=32, batch_size=8, epochs=2, warmup_epochs=1, calibration_epochs=2,
                         calibration_batch_size=8)
    result = train_method("selfcon", rows, rows, cfg, tmp_path / "a", tmp_path / "a_checkpoints", "cpu")
    calibration = result["calibration"]
    assert calibration["model_classes"] == ["diffusion", "gan"]
    assert [h["epoch"] for h in result["history"]] == [1, 2] and len(calibration["calibration_history"]) == 2
    assert all(math.isfinite(h["train_loss"]) and h["train_loss"] > 0 for h in result["history"])
    assert all(math.isfinite(h["origin_loss"]) and math.isfinite(h["model_loss"])
               for h in calibration["calibration_history"])
    # stage 2 re-estimates the backbone's batch-norm statistics and trains the heads, nothing else
    stage1 = seen
    saved = torch.load(tmp_path / "a/detector.pt", weights_only=True)
    assert saved["config"]["objective"]["name"] == "selfcon" and saved["config"]["optimizer"] == "sgd"
    for key, value in stage1.items():
        if not key.endswith("num_batches_tracked"):
            frozen = key.startswith("net.") and not key.endswith(("running_mean", "running_var"))
            assert torch.equal(value, saved["model"][key]) == frozen, key
    scored = score(tmp_path / "a/detector.pt", rows, device="cpu")
    assert len(scored) == 8 and scored["fake_probability"].between(0, 1).all()
    assert set(scored["model_pred"]) <= {"diffusion", "gan"}
    assert np.allclose(scored[["p_diffusion", "p_gan"]].sum(axis=1), 1)
    train_method("selfcon", rows, rows, cfg, tmp_path / "b", tmp_path / "b_checkpoints", "cpu")
    again = score(tmp_path / "b/detector.pt", rows, device="cpu")
    assert again["fake_probability"].equals(scored["fake_probability"])
