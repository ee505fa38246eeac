"""Kennedy & Carpenter's ARK5(4)8L[2]SA additive Runge-Kutta method (2003, Appl. Numer. Math. 44:
139-181; diffrax's ``KenCarp5``): order 5 with an embedded order-4 solution, 8 stages; an
explicit tableau for the non-stiff part of f and an L-stable, stiffly accurate ESDIRK tableau
(diagonal gamma = 41 / 200) for its stiff linear part."""

from .imex_rk import IMEXRK
from .tableau import AdditiveTableau, ButcherTableau, DenseOutput, ImplicitTableau

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

# A continuous extension of order 4 over the stage derivatives f(Y_i) and f(t1, y1) (one
# weight per stage for both parts of f), y(t0 + theta h) = y0 + h sum_i B_i(theta) k_i with
# B_i of degree 5 (row i: the coefficients of theta^1 .. theta^5; the last row f(t1, y1)'s).
# The coefficients are found here, not taken from the paper: they solve the additive
# method's order conditions up to order 4 (the 36 coloured trees), B(1) = b (B_9(1) = 0),
# and cancel the O(h lambda) term of y' = lambda y in the implicit part as h lambda -> -inf,
# so that stiff components stay bounded (|R_theta(z)| <= 3.4 for real z <= 0: the
# interpolant may overshoot a fast transient between steps, not grow with the stiffness);
# the parameters left minimise the order-5 error terms' squared integral over theta. The
# optimum has B_2 = B_3 = 0, B_9 = 3/2 theta^2 - 4 theta^3 + 5/2 theta^4 and B'(1) =
# f(t1, y1)'s (continuous derivative across steps); sum_i |B_i(theta)| <= 5.7.
# tests/test_tableaux.py checks each property.
_DENSE = (
    (1.4775277363741859, -6.943075141121063, 8.971247242153124, -3.501122940315996,
     -0.10012548384165089),
    (0.0, 0.0, 0.0, 0.0, 0.0),
    (0.0, 0.0, 0.0, 0.0, 0.0),
    (-4.653530501678203, 34.50224230101789, -43.98729563262154, 14.775450388115313,
     1.7018262489317828),
    (-0.34534382706168737, 2.4439686605192605, -4.903685378258535, 3.1546813029851273,
     -0.49005251426664026),
    (4.401010069359318, -28.103069090917185, 32.89021132483905, -9.428194194322916,
     -1.8305458169148248),
    (-0.15809178747519054, -0.14929009927981363, 4.23919643990105, -3.583779197116801,
     0.41483989099594115),
    (0.2784283104815774, -3.25077663021909, 6.790326003986848, -3.9170353593447276,
     0.30405767509539205),
    (0.0, 1.5, -4.0, 2.5, 0.0),
)  # fmt: skip

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
    dense=DenseOutput(coefficients=_DENSE, order=4, extra_c=(1.0,), extra_a=(_B,)),
)


class KenCarp5(IMEXRK):
    """IMEX ARK5(4)8L[2]SA, order 5(4) with 8 stages, for f = L y + N(t, y) with a stiff
    linear L (a PDE's diffusion) and a non-stiff N: 7 exact solves with (I - h gamma L)
    and 8 evaluations of f per step, no Newton iteration. Dense output is a continuous
    extension of order 4 over the stages and f(t1, y1) (the next step's first stage).

    Arguments:
        linear: the stiff linear part L (``model.linear_part()`` of a ``neuralode.pde``
            model), as for [`IMEXRK`][neuralode.solvers.IMEXRK]; ``None``: L = 0, the
            explicit tableau alone.

    Raises:
        ValueError: as [`IMEXRK`][neuralode.solvers.IMEXRK].
    """

    tableaux = KENCARP5_TABLEAU
