"""Kennedy & Carpenter's ARK5(4)8L[2]SA additive Runge-Kutta method (2003, Appl. Numer. Math. 44:
139-181; diffrax's ``KenCarp5``): order 5 with an embedded order-4 solution, 8 stages; an
explicit tableau for the non-stiff part of f and an L-stable, stiffly accurate ESDIRK tableau
(diagonal gamma = 41 / 200) for its stiff linear part."""

from .imex_rk import IMEXRK
from .tableau import AdditiveTableau, ButcherTableau, ImplicitTableau

_G = 41 / 200
_B = (
    -872700587467 / 9133579230613,
    0.0,
    0.0,
    22348218063261 / 9555858737531,
    -1143369518992 / 8141816002931,
    -39379526789629 / 19018526304540,
    32727382324388 / 42900044865799,
    _G,
)
_B_EMBEDDED = (
    -975461918565 / 9796059967033,
    0.0,
    0.0,
    78070527104295 / 32432590147079,
    -548382580838 / 3424219808633,
    -33438840321285 / 15594753105479,
    3629800801594 / 4656183773603,
    4035322873751 / 18575991585200,
)
_C = (
    0.0,
    41 / 100,
    2935347310677 / 11292855782101,
    1426016391358 / 7196633302097,
    92 / 100,
    24 / 100,
    3 / 5,
    1.0,
)
_B_ERROR = tuple(x - y for x, y in zip(_B, _B_EMBEDDED))

KENCARP5_TABLEAU = AdditiveTableau(
    explicit=ButcherTableau(
        name="kencarp5",
        c=_C,
        a=(
            (),
            (41 / 100,),
            (367902744464 / 2072280473677, 677623207551 / 8224143866563),
            (1268023523408 / 10340822734521, 0.0, 1029933939417 / 13636558850479),
            (
                14463281900351 / 6315353703477,
                0.0,
                66114435211212 / 5879490589093,
                -54053170152839 / 4284798021562,
            ),
            (
                14090043504691 / 34967701212078,
                0.0,
                15191511035443 / 11219624916014,
                -18461159152457 / 12425892160975,
                -281667163811 / 9011619295870,
            ),
            (
                19230459214898 / 13134317526959,
                0.0,
                21275331358303 / 2942455364971,
                -38145345988419 / 4862620318723,
                -1 / 8,
                -1 / 8,
            ),
            (
                -19977161125411 / 11928030595625,
                0.0,
                -40795976796054 / 6384907823539,
                177454434618887 / 12078138498510,
                782672205425 / 8267701900261,
                -69563011059811 / 9646580694205,
                7356628210526 / 4942186776405,
            ),
        ),
        b=_B,
        order=5,
        b_error=_B_ERROR,
        error_order=4,
    ),
    implicit=ImplicitTableau(
        name="kencarp5",
        c=_C,
        a=(
            (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
            (_G, _G, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
            (41 / 400, -567603406766 / 11931857230679, _G, 0.0, 0.0, 0.0, 0.0, 0.0),
            (
                683785636431 / 9252920307686,
                0.0,
                -110385047103 / 1367015193373,
                _G,
                0.0,
                0.0,
                0.0,
                0.0,
            ),
            (
                3016520224154 / 10081342136671,
                0.0,
                30586259806659 / 12414158314087,
                -22760509404356 / 11113319521817,
                _G,
                0.0,
                0.0,
                0.0,
            ),
            (
                218866479029 / 1489978393911,
                0.0,
                638256894668 / 5436446318841,
                -1179710474555 / 5321154724896,
                -60928119172 / 8023461067671,
                _G,
                0.0,
                0.0,
            ),
            (
                1020004230633 / 5715676835656,
                0.0,
                25762820946817 / 25263940353407,
                -2161375909145 / 9755907335909,
                -211217309593 / 5846859502534,
                -4269925059573 / 7827059040719,
                _G,
                0.0,
            ),
            (
                -872700587467 / 9133579230613,
                0.0,
                0.0,
                22348218063261 / 9555858737531,
                -1143369518992 / 8141816002931,
                -39379526789629 / 19018526304540,
                32727382324388 / 42900044865799,
                _G,
            ),
        ),
        b=_B,
        order=5,
        b_error=_B_ERROR,
        error_order=4,
    ),
)


class KenCarp5(IMEXRK):
    """IMEX ARK5(4)8L[2]SA, order 5(4) with 8 stages, for f = L y + N(t, y) with a stiff
    linear L (a PDE's diffusion) and a non-stiff N: 7 exact solves with (I - h gamma L)
    and 8 evaluations of f per step, no Newton iteration. Dense output is cubic Hermite.

    Arguments:
        linear: the stiff linear part L (``model.linear_part()`` of a ``neuralode.pde``
            model), as for [`IMEXRK`][neuralode.solvers.IMEXRK]; ``None``: L = 0, the
            explicit tableau alone.

    Raises:
        ValueError: as [`IMEXRK`][neuralode.solvers.IMEXRK].
    """

    tableaux = KENCARP5_TABLEAU
