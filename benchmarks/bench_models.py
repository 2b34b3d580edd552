"""Training-step cost of FSR and of the CDPA losses on the paper's UNet.

Run: .venv/bin/python -m pytest benchmarks/bench_models.py --benchmark-enable
(one training step: forward + backward, batch 6, 128×128, init_features=32); the ratios
of ``fsr`` and ``fsr+cdpa`` to ``plain`` are printed at the end (benchmarks/conftest.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedbcs_models import CDPAModel, UNet

BATCH, SIZE, CLASSES, FEATURES = 6, 128, 2, 32
PROTOS_PER_CLASS = 3  # FINCH clusters per class on the server
TEMPERATURE = 0.1


def setup_step(provider: str):
    """A zero-argument training step (forward + backward) for ``plain``, ``fsr``, ``fsr+cdpa``."""
    torch.manual_seed(0)
    fsr_stages = () if provider == "plain" else (2, 3, 4)
    unet = UNet(3, CLASSES, FEATURES, fsr_stages=fsr_stages)
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    labels = (torch.rand(BATCH, SIZE, SIZE) > 0.7).long()  # 30 % foreground
    if provider != "fsr+cdpa":

        def step():
            unet.zero_grad(set_to_none=True)
            F.cross_entropy(unet(x), labels).backward()

        return step
    model = CDPAModel(unet)
    dims = {stream: model.head.embedding_dim(stream) for stream in ("encoder", "decoder")}
    protos = {s: torch.randn(CLASSES * PROTOS_PER_CLASS, d) for s, d in dims.items()}
    proto_classes = torch.arange(CLASSES).repeat_interleave(PROTOS_PER_CLASS)
    means = {s: p.view(CLASSES, PROTOS_PER_CLASS, -1).mean(1) for s, p in protos.items()}

    def step():
        model.zero_grad(set_to_none=True)
        logits, embeddings = model.forward_with_embeddings(x)
        loss = F.cross_entropy(logits, labels)
        for stream, emb in embeddings.items():
            # FedBCS's terms: foreground pixels as anchors, evaluated there only.
            target = emb.labels_at_target(labels)
            anchors = target > 0
            sq_norm = emb.sq_norm(pixels=anchors)
            dots = emb.dot(torch.cat([protos[stream], means[stream]]), pixels=anchors)
            proto_dots, mean_dots = dots.split([len(proto_classes), CLASSES], dim=1)
            cosine = emb.cosine(protos[stream], sq_norm, dots=proto_dots, pixels=anchors)
            similarity = cosine / TEMPERATURE
            positive = proto_classes[None, :] == target[anchors][:, None]
            contrastive = similarity.logsumexp(1) - similarity.masked_fill(
                ~positive, float("-inf")
            ).logsumexp(1)
            distance = emb.sq_distance(means[stream], sq_norm, dots=mean_dots, pixels=anchors)
            consistency = distance.gather(1, target[anchors][:, None]) / emb.dim
            loss = loss + contrastive.mean() + consistency.mean()
        loss.backward()

    return step


@pytest.mark.benchmark(group="train_step")
@pytest.mark.parametrize("provider", ["plain", "fsr", "fsr+cdpa"])
def test_train_step(benchmark, provider):
    benchmark.pedantic(setup_step(provider), rounds=10, warmup_rounds=1)
