"""The offline capture's options (``lmfit3d.capture.fit_capture``), one small frozen dataclass per role.

``CaptureConfig`` holds the energy weights (``fit``: the real-time fitter's ``FitConfig``), the
initialisation (``CaptureInit``), the solver and its stopping rule (``CaptureSolver``), the L-BFGS-B
settings (``LbfgsSettings``) and L-BFGS's preconditioner (``Preconditioner``).  Each group checks its
own values and raises ValueError.  Example: ``CaptureConfig(solver=CaptureSolver(method="lm",
max_iter=50), init=CaptureInit(frames=4))``; one option of a config ``cfg``:
``dataclasses.replace(cfg, solver=replace(cfg.solver, max_iter=50))``.
"""
from dataclasses import dataclass, field, fields

from .fit import FitConfig


@dataclass(frozen=True)
class CaptureInit:
    """How the capture is initialised (``lmfit3d.capture_init``): each camera tracked alone by the
    real-time fitter (with ``CaptureConfig.fit``'s LM settings).

    Attributes
    ----------
    frames : int, frames tracked per non-reference camera to find its extrinsics (>= 1).
    stride : int, the reference camera is tracked on every ``stride``-th frame (and the last), the
        frames between are interpolated; 0: automatic, F // 128 (about 128 frames tracked).
    two_pass : bool, track the reference camera twice (second pass with the identity held).
    reference_camera : int or None, the gauge camera (None: 0, or the first camera with a face).
    """

    frames: int = 8
    stride: int = 0
    two_pass: bool = False
    reference_camera: int = None

    def __post_init__(self):
        if self.frames < 1:
            raise ValueError(f"CaptureInit.frames must be >= 1, got {self.frames}")
        if self.stride < 0:
            raise ValueError(f"CaptureInit.stride must be >= 0 (0: automatic), got {self.stride}")


@dataclass(frozen=True)
class CaptureSolver:
    """Which solver runs the capture, its iteration cap and its stopping rule (both solvers).

    Attributes
    ----------
    method : "auto" (Levenberg-Marquardt on the whole problem, ``lmfit3d.capture_gn``, when at most
        ``lm_max_unknowns`` parameters are free, else L-BFGS), "lm" or "lbfgs".  LM converges in
        tens of iterations where L-BFGS with free cameras needs over a thousand (issue 17); its
        dense matrix costs N^2 doubles and N^3 / 3 flops per iteration.
    max_iter : int, iterations of the solve (>= 1; both stages of a staged L-BFGS solve together).
    lm_max_unknowns : int, the largest free parameter count "auto" gives to LM.
    stop_decrease, stop_window : float, int, the capture's own stopping rule, in the energy's units:
        L-BFGS stops, converged (status 1), when the cost fell by less than ``stop_decrease`` per
        landmark residual (one coordinate over sigma) and iteration, on average over the last
        ``stop_window`` iterations.  scipy's ``ftol`` is relative to the cost itself, which with many
        residuals lets a decrease far below any change of the result count as progress (issue 17,
        calibrated, 8 cameras: the rule stops at 190 iterations; scipy's tests alone at 1,044, 28 cost
        units lower, the face error 0.0997 -> 0.0998 mm).  0: off.  The Levenberg-Marquardt solver
        stops when one iteration lowers the cost by less than this (and predicted no more).
    """

    method: str = "auto"
    max_iter: int = 200
    lm_max_unknowns: int = 3000
    stop_decrease: float = 3e-6
    stop_window: int = 10

    def __post_init__(self):
        if self.method not in ("auto", "lm", "lbfgs"):
            raise ValueError(f"CaptureSolver.method must be 'auto', 'lm' or 'lbfgs', got {self.method!r}")
        if self.max_iter < 1:
            raise ValueError(f"CaptureSolver.max_iter must be >= 1, got {self.max_iter}")
        if not self.stop_decrease >= 0:
            raise ValueError(f"CaptureSolver.stop_decrease must be >= 0, got {self.stop_decrease}")
        if self.stop_window < 1:
            raise ValueError(f"CaptureSolver.stop_window must be >= 1, got {self.stop_window}")


@dataclass(frozen=True)
class LbfgsSettings:
    """The L-BFGS-B solve's own settings (``CaptureProblem.solve``): scipy's options and the first
    stage with the identity held.

    Attributes
    ----------
    maxcor : int, L-BFGS memory (correction pairs, >= 1).
    ftol, gtol : float, L-BFGS-B's relative cost reduction and projected gradient tolerances
        (the gradient is that of the rescaled variables; >= 0).
    identity_hold : float in [0, 1), with free camera extrinsics: the fraction of
        ``CaptureSolver.max_iter`` spent with the identity held at its initial value before
        everything is freed (0: one stage).
    """

    maxcor: int = 20
    ftol: float = 1e-8
    gtol: float = 1e-5
    identity_hold: float = 0.5

    def __post_init__(self):
        if self.maxcor < 1:
            raise ValueError(f"LbfgsSettings.maxcor must be >= 1, got {self.maxcor}")
        if not (self.ftol >= 0 and self.gtol >= 0):
            raise ValueError(f"LbfgsSettings.ftol and gtol must be >= 0, got {self.ftol}, {self.gtol}")
        if not 0.0 <= self.identity_hold < 1.0:
            raise ValueError(f"LbfgsSettings.identity_hold must be in [0, 1), got {self.identity_hold}")


@dataclass(frozen=True)
class Preconditioner:
    """L-BFGS's change of variables z = z0 + P u (``lmfit3d.capture_precond``; LM needs none).

    Attributes
    ----------
    kind : "block" (each frame's 18 x 18 Gauss-Newton pose block, diagonal elsewhere),
        "block_identity" (also the K x K identity block: a few % fewer iterations on dense703, but
        on ibug68 with fixed sigma it led L-BFGS into a worse minimum) or "diagonal" (the
        Gauss-Newton diagonal only, as before).
    schur : bool, with a block kind and free cameras, whiten the identity and the free camera
        parameters by the Schur complement of the frames' pose blocks (experimental, off by default:
        issue 17's measurements in docs/results.md).  Without it, each free camera is whitened by its
        own GN block.
    """

    kind: str = "block"
    schur: bool = False

    def __post_init__(self):
        if self.kind not in ("block", "block_identity", "diagonal"):
            raise ValueError(f"Preconditioner.kind must be 'block', 'block_identity' or 'diagonal', "
                             f"got {self.kind!r}")


@dataclass(frozen=True)
class CaptureConfig:
    """The capture's options, one group per role.

    Attributes
    ----------
    fit : FitConfig, energy weights and sparsity threshold: the real-time fitter's options (its LM
        settings drive the initialisation).
    init : CaptureInit, the initialisation (frames tracked, reference camera).
    solver : CaptureSolver, LM or L-BFGS, iteration cap and stopping rule.
    lbfgs : LbfgsSettings, L-BFGS-B's own settings.
    preconditioner : Preconditioner, L-BFGS's change of variables.
    """

    fit: FitConfig = field(default_factory=FitConfig)
    init: CaptureInit = field(default_factory=CaptureInit)
    solver: CaptureSolver = field(default_factory=CaptureSolver)
    lbfgs: LbfgsSettings = field(default_factory=LbfgsSettings)
    preconditioner: Preconditioner = field(default_factory=Preconditioner)

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, f.type):
                raise ValueError(f"CaptureConfig.{f.name} must be a {f.type.__name__}, "
                                 f"got {type(value).__name__} {value!r}")
