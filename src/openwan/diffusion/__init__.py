"""Flow-matching sampling and training maths (pure torch, no models): σ schedules, solvers, guidance, consistency
distillation."""

from openwan.diffusion.consistency import student_sigmas, teacher_sigmas
from openwan.diffusion.guidance import cfg_combine, guide_scale_for, select_expert
from openwan.diffusion.schedule import (
    NUM_TRAIN_TIMESTEPS,
    resolution_shift,
    sample_training_sigmas,
    sampling_sigmas,
    shift_sigmas,
    timesteps_from_sigmas,
)
from openwan.diffusion.solvers import (
    SOLVER_NAMES,
    Consistency,
    DPMSolverPP2M,
    Euler,
    Solver,
    UniPC,
    make_solver,
    sample,
)

__all__ = [
    "NUM_TRAIN_TIMESTEPS",
    "SOLVER_NAMES",
    "Consistency",
    "DPMSolverPP2M",
    "Euler",
    "Solver",
    "UniPC",
    "cfg_combine",
    "guide_scale_for",
    "make_solver",
    "resolution_shift",
    "sample",
    "sample_training_sigmas",
    "sampling_sigmas",
    "select_expert",
    "shift_sigmas",
    "student_sigmas",
    "teacher_sigmas",
    "timesteps_from_sigmas",
]
