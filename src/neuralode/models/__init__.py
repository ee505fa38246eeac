"""Models built on the core API, as ordinary ``torch.nn.Module``s."""

from .cde import CDEField, NeuralCDE
from .classifiers import Augment, ODENet, ResBlock, ResNet, RKNet
from .cnf import (
    CNF,
    CNFDynamics,
    ConcatSquashConv2d,
    ConcatSquashConvNet,
    ConcatSquashLinear,
    ConcatSquashMLP,
    GatedPlanarDynamics,
    SequentialFlow,
    exact_trace,
    ffjord_2d,
    hutchinson_trace,
    standard_normal_log_prob,
)
from .data_control import DataControlled, DataControlledMLP
from .deq import (
    DEQ,
    ConvergenceError,
    ConvergenceWarning,
    DEQNet,
    EquilibriumCell,
    SolveReport,
    VariationalDropout,
)
from .dynamics import ConcatConv2d, ConvDynamics, MLPDynamics
from .galerkin import (
    Basis,
    FourierBasis,
    GalerkinConv2d,
    GalerkinLinear,
    GalerkinMLPDynamics,
    PiecewiseConstantBasis,
    PolynomialBasis,
    make_basis,
)
from .hamiltonian import EnergyMLP, HamiltonianDynamics, SeparableHamiltonian
from .lagrangian import LagrangianAcceleration
from .latent import (
    ELBO,
    ODERNN,
    RNNVAE,
    GapRNN,
    LatentODE,
    LinearPlusMLP,
    RNNBaseline,
    collate_irregular,
    extrapolation_masks,
)
from .latent_sde import LatentSDE
from .ode_block import ODEBlock
from .planar import PlanarFlow, PlanarLayer
from .regularisers import (
    DerivativePenalty,
    JacobianFrobenius,
    KineticEnergy,
    RandomEndTime,
    Regulariser,
)
from .sde_gan import CDEDiscriminator, PathIncrements, SDEGenerator
from .second_order import AccelerationMLP, SecondOrderDynamics
from .transformer import TimeEmbedding, TransformerDynamics
from .unet import UNetDynamics

__all__ = [
    "CDEDiscriminator",
    "CDEField",
    "CNF",
    "CNFDynamics",
    "ConcatSquashConv2d",
    "ConcatSquashConvNet",
    "ConcatSquashLinear",
    "ConcatSquashMLP",
    "GatedPlanarDynamics",
    "PathIncrements",
    "PlanarFlow",
    "PlanarLayer",
    "SDEGenerator",
    "SequentialFlow",
    "exact_trace",
    "ffjord_2d",
    "hutchinson_trace",
    "standard_normal_log_prob",
    "AccelerationMLP",
    "Augment",
    "Basis",
    "DataControlled",
    "DataControlledMLP",
    "FourierBasis",
    "GalerkinConv2d",
    "GalerkinLinear",
    "GalerkinMLPDynamics",
    "PiecewiseConstantBasis",
    "PolynomialBasis",
    "make_basis",
    "ConcatConv2d",
    "ConvDynamics",
    "ConvergenceError",
    "ConvergenceWarning",
    "DEQ",
    "DEQNet",
    "EquilibriumCell",
    "VariationalDropout",
    "SolveReport",
    "DerivativePenalty",
    "JacobianFrobenius",
    "KineticEnergy",
    "ELBO",
    "EnergyMLP",
    "GapRNN",
    "HamiltonianDynamics",
    "LagrangianAcceleration",
    "LatentODE",
    "LatentSDE",
    "LinearPlusMLP",
    "MLPDynamics",
    "NeuralCDE",
    "ODEBlock",
    "ODENet",
    "ODERNN",
    "RNNBaseline",
    "RNNVAE",
    "RKNet",
    "SecondOrderDynamics",
    "SeparableHamiltonian",
    "RandomEndTime",
    "Regulariser",
    "ResBlock",
    "ResNet",
    "TimeEmbedding",
    "TransformerDynamics",
    "UNetDynamics",
    "collate_irregular",
    "extrapolation_masks",
]
