"""FedBCS client loss and payload against an independent, materialised computation."""

import pytest
import torch
import torch.nn.functional as F

from fedbcs_fl.algorithms.base import ClientUpdate

from .._tiny import tiny_algorithm


def _contrast_by_formula(cos, positives, tau, contrast):
    """Eq. 15 per anchor in float64: plain exponentials ("exact"), or with the released
    code's caps (logits ≤ 20, exponentials ≤ 1e6, 1e-9 added to both sums)."""
    weights = (cos / tau).exp()
    if contrast == "exact":
        return -torch.log((weights * positives).sum(1) / weights.sum(1))
    weights = (cos / tau).clamp(max=20).exp().clamp(max=1e6)
    return -torch.log(((weights * positives).sum(1) + 1e-9) / (weights.sum(1) + 1e-9))


def test_released_contrast_is_the_default():
    assert tiny_algorithm("fedbcs").opt["contrast"] == "released"


# τ = 0.05 saturates nothing here; at τ = 0.005 the released caps bite on most anchors.
@pytest.mark.parametrize("contrast, tau", [("exact", 0.05), ("released", 0.005)])
def test_alignment_terms_equal_materialised_formula(contrast, tau):
    torch.manual_seed(0)
    algorithm = tiny_algorithm("fedbcs", tau=tau, contrast=contrast)
    model = algorithm.build_model()
    x = torch.randn(2, 3, 32, 32)
    masks = (torch.rand(2, 32, 32) > 0.6).long()
    _, embeddings = model.forward_with_embeddings(x)
    for stream, emb in embeddings.items():
        dim = emb.dim
        protos = torch.randn(3, dim)
        payload = {
            f"protos/{stream}": protos,
            f"labels/{stream}": torch.tensor([0, 1, 1]),
            f"mean/{stream}": torch.randn(2, dim),
            f"mean_present/{stream}": torch.tensor([True, True]),
        }
        contra, consis = algorithm.alignment_terms(emb, masks, payload, stream)

        e = emb.materialize().permute(0, 2, 3, 1).double()  # [B, Ht, Wt, D]
        labels = F.interpolate(masks[:, None].float(), size=e.shape[1:3], mode="nearest")
        labels = labels[:, 0].long()
        anchors = e[labels > 0]
        cos = F.normalize(anchors, dim=1) @ F.normalize(protos.double(), dim=1).T
        positives = torch.tensor([False, True, True])
        expected_contra = _contrast_by_formula(cos, positives, tau, contrast).mean()
        mean = payload[f"mean/{stream}"].double()
        expected_consis = ((anchors - mean[1]) ** 2).sum(1).mean() / dim
        torch.testing.assert_close(contra.double(), expected_contra, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(consis.double(), expected_consis, rtol=1e-4, atol=1e-5)


def test_payload_has_four_prototypes_and_server_clusters_them():
    torch.manual_seed(0)
    algorithm = tiny_algorithm("fedbcs")
    model = algorithm.build_model()
    from fedbcs_fl.algorithms.base import LocalContext

    ctx = LocalContext(global_payload={}, state={}, device=torch.device("cpu"), last_epoch=True)
    x = torch.randn(2, 3, 32, 32)
    masks = (torch.rand(2, 32, 32) > 0.5).long()
    algorithm.training_loss(model, x, masks, ctx)
    payload = algorithm.end_local(model, ctx)
    assert algorithm.count_prototypes(payload) == 4
    # The prototypes are the exact class means of the materialised embedding.
    _, embeddings = model.forward_with_embeddings(x)
    e = embeddings["decoder"].materialize()
    labels = embeddings["decoder"].labels_at_target(masks)
    fg = e.permute(0, 2, 3, 1)[labels == 1].mean(0)
    torch.testing.assert_close(payload["protos/decoder"][1], fg, rtol=1e-4, atol=1e-5)

    updates = [ClientUpdate({}, 2, payload), ClientUpdate({}, 2, payload)]
    server = algorithm.aggregate_payload(updates, {})
    # Two identical clients: one cluster per class, equal to the client prototypes.
    assert server["labels/decoder"].tolist() == [0, 1]
    torch.testing.assert_close(server["mean/decoder"], payload["protos/decoder"])


def test_no_cdpa_sends_nothing():
    algorithm = tiny_algorithm("fedbcs", cdpa=False)
    assert algorithm.aggregate_payload([ClientUpdate({}, 1, {})], {}) == {}
    assert not hasattr(algorithm.build_model(), "forward_with_embeddings")
