"""The federated methods by name: where each one's class lives, and the options it takes.

Declared here, apart from the classes, in a module that imports no torch: ``fedbcs train
--help`` lists every method's options, and ``--method`` takes these names, without
importing torch (issue 18). Each class reads its own entry (``options =
METHODS[name].options``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedbcs_models import FUSIONS
from fedbcs_ops import GATES

from ..schema import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Option


@dataclass(frozen=True)
class Method:
    """One federated method.

    Args:
        module: the module of :mod:`fedbcs_fl.algorithms` that defines its class.
        cls: its :class:`~fedbcs_fl.algorithms.Algorithm` subclass, by name.
        options: its hyper-parameters by name (default: none), each with its default, help
            (``fedbcs train --help``) and the values it may take; the class reads them
            from ``self.opt``. A default of None is the dataset's
            (:class:`~fedbcs_fl.data.RunDefaults`, e.g. tau). A name is one command-line
            flag for every method that has it, so it has one type.
    """

    module: str
    cls: str
    options: dict[str, Option] = field(default_factory=dict)


# In the order of paper Table 1.
METHODS: dict[str, Method] = {
    "fedavg": Method("base", "Algorithm"),
    "fedprox": Method(
        "fedprox",
        "FedProx",
        {
            "mu": Option(
                0.01, "μ, weight of the proximal term μ/2 · ‖w − w_global‖²", interval=NON_NEGATIVE
            ),
        },
    ),
    "moon": Method(
        "moon",
        "MOON",
        {
            "mu": Option(1.0, "μ, weight of the model-contrastive term", interval=NON_NEGATIVE),
            "tau": Option(0.5, "temperature of the model-contrastive term", interval=POSITIVE),
            "proj_dim": Option(256, "output width of the projection head", interval=AT_LEAST_ONE),
        },
    ),
    "fedproto": Method(
        "fedproto",
        "FedProto",
        {
            "lambda_proto": Option(
                1.0,
                "weight of the class-balanced squared-distance penalty L_proto",
                interval=NON_NEGATIVE,
            ),
        },
    ),
    "harmofl": Method(
        "harmofl",
        "HarmoFL",
        {
            "alpha": Option(
                0.05,
                "radius of the weight perturbation (0: plain optimiser steps)",
                interval=NON_NEGATIVE,
            ),
            "amplitude_ratio": Option(
                0.0,
                "half-side of the swapped low-frequency amplitude square over the image side; "
                "0 swaps the DC amplitude only, as the released code (L=0)",
                interval="[0, 0.5)",
            ),
            "amplitude_momentum": Option(
                0.1, "moving-average momentum of the amplitude buffer", interval="[0, 1]"
            ),
        },
    ),
    "fpl": Method(
        "fpl",
        "FPL",
        {
            "tau": Option(
                0.02, "InfoNCE temperature of the cluster-prototype contrast", interval=POSITIVE
            ),
        },
    ),
    "fedcontrast": Method(
        "fedcontrast",
        "FedContrast",
        {
            "tau": Option(0.1, "InfoNCE temperature of both contrasts", interval=POSITIVE),
            "lambda_own": Option(
                1.0,
                "weight of L_own, the contrast with the client's own prototypes",
                interval=NON_NEGATIVE,
            ),
            "lambda_others": Option(
                1.0,
                "weight of L_others, the contrast with the other clients' prototypes",
                interval=NON_NEGATIVE,
            ),
        },
    ),
    "fedplvm": Method(
        "fedplvm",
        "FedPLVM",
        {
            "tau": Option(0.07, "temperature of the α-sparsity InfoNCE L_α", interval=POSITIVE),
            "alpha_sparsity": Option(
                0.25, "α, the power of the clamped cosines in L_α", interval=POSITIVE
            ),
            "lambda_plvm": Option(
                100.0, "λ, weight of L_α + L_corr, as released", interval=NON_NEGATIVE
            ),
            "prototype_pass": Option(
                "after-training",
                "after-training: local prototypes from a pass of the trained model over the last "
                "epoch's batches, as released; last-epoch: from the training steps",
                choices=("after-training", "last-epoch"),
            ),
        },
    ),
    "feduv": Method(
        "feduv",
        "FedUV",
        {
            "lambda_variance": Option(
                2.5, "weight of the prediction-variance hinge", interval=NON_NEGATIVE
            ),
            "lambda_uniformity": Option(
                0.5, "weight of the feature-uniformity potential", interval=NON_NEGATIVE
            ),
            "uniformity_level": Option(
                "image",
                "image: the uniformity term spreads one feature per image, its pixels' mean "
                "(the original's one representation per sample); pixel: every pixel's feature",
                choices=("image", "pixel"),
            ),
            "uniformity_samples": Option(
                2048,
                "most pixel features (sampled) in the uniformity term at uniformity_level pixel",
                interval="[2, inf)",
            ),
            "variance_target": Option(
                "labels",
                "labels: γ_c = spread of the one-hot labels of class c in the batch, what a "
                "perfect prediction reaches; balanced: γ = 1/√C (the classification original's, "
                "unreachable for 2 classes)",
                choices=("labels", "balanced"),
            ),
            "uniformity_sigma": Option(
                "released",
                "released: σ = median of the non-zero squared distances, with gradient; "
                "detached: median of all, without",
                choices=("released", "detached"),
            ),
        },
    ),
    "fedbcs": Method(
        "fedbcs",
        "FedBCS",
        {
            "tau": Option(
                None,
                "τ, the InfoNCE temperature of L_contra",
                none_means="the dataset's: nuclei sets 0.005, prostate sets 0.4, the paper's best",
                type=float,
                interval=POSITIVE,
            ),
            "proto_dim": Option(
                256,
                "channels per fused level of a stream's embedding (3 levels: D = 3 × this)",
                interval=AT_LEAST_ONE,
            ),
            "fsr": Option(True, "FSR after encoder stages 2–4 (off: paper Table 2's CDPA only)"),
            "cdpa": Option(True, "CDPA, the prototype alignment (off: paper Table 2's FSR only)"),
            "fsr_gate": Option(
                "static", "FSR's gate: static as released, adaptive as paper eq. 6", choices=GATES
            ),
            "fusion": Option(
                "deepest",
                "embedding fusion: each level with the deepest, as released, or adjacent, as "
                "paper eq. 10",
                choices=FUSIONS,
            ),
            "lambda_consis": Option(1.0, "λ, the weight of L_consis", interval=NON_NEGATIVE),
            "contrast": Option(
                "released",
                "L_contra's InfoNCE: released, with the released code's capped exponentials, "
                "or exact, in log space (docs/fidelity.md)",
                choices=("released", "exact"),
            ),
        },
    ),
}
