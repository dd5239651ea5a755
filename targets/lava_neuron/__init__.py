"""st2chip's own Lava neuron: Loihi's fixed-point CUBA-LIF with reset mode, refractory step, silent window end.

Lava's ``LIFReset`` (model ``PyLifResetModelBitAcc``) resets a spiking neuron's
voltage to zero and zeroes every neuron's state every ``reset_interval`` steps.
Loihi 2's neurons are programmable; st2chip needs three things ``LIFReset`` lacks:

- ``reset_mode="subtract"``: on a spike ``v <- v - (vth << 6)`` instead of
  ``v <- 0`` (reset by subtraction: st2chip's sLIF, SpikingJelly's soft reset);
- ``refractory=1``: a neuron that spiked at the step before keeps ``v`` (no
  voltage update) and does not spike, while ``u`` integrates as usual (snnTorch's
  ``Synaptic`` reset to zero holds ``mem`` at 0 for that step). The state of the
  step before is cleared with ``u`` and ``v`` at the periodic reset;
- ``quiet``: no spikes are sent in the last ``quiet`` steps before each periodic
  reset, i.e. at the time steps where ``(time_step - reset_offset) %
  reset_interval >= reset_interval - quiet`` (Lava's ``time_step`` is 1 at the
  first step). st2chip runs samples back to back in one Lava run, one per window
  of ``reset_interval`` steps; a recurrent or delayed population's spikes from
  the end of one window would otherwise reach the next sample. The state evolves as usual in those steps; only what is sent is zero.

Everything else (24-bit ``u``/``v``, decays truncated toward zero, wrap of ``u``,
clip of ``v``, bias mantissa/exponent, threshold ``vth << 6``, the periodic state
reset before the update) is Lava's own arithmetic, inherited from
``AbstractPyLifModelFixed``; with ``reset_mode="zero"`` and ``quiet=0`` the model
is bit-identical to ``PyLifResetModelBitAcc`` (``refractory=0``, the default).
"""

from __future__ import annotations

import numpy as np

from st2chip.targets.lava_compat import ensure_lava

ensure_lava()

from lava.magma.core.decorator import implements, requires, tag  # noqa: E402
from lava.magma.core.model.py.ports import PyOutPort  # noqa: E402
from lava.magma.core.model.py.type import LavaPyType  # noqa: E402
from lava.magma.core.process.ports.ports import InPort, OutPort  # noqa: E402
from lava.magma.core.process.process import AbstractProcess  # noqa: E402
from lava.magma.core.process.variable import Var  # noqa: E402
from lava.magma.core.resources import CPU  # noqa: E402
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol  # noqa: E402
from lava.proc.lif.models import AbstractPyLifModelFixed  # noqa: E402

RESET_MODES = ("zero", "subtract")
REFRACTORY_STEPS = (0, 1)


class CubaNeuron(AbstractProcess):
    """CUBA-LIF neurons like Lava's ``LIFReset`` (one ``du``, ``dv``, ``vth`` per process), plus
    ``reset_mode`` (``"zero"`` or ``"subtract"``), ``refractory`` (0 or 1: steps ``v`` is held after a spike)
    and ``quiet`` (silent steps at the end of each window)."""

    def __init__(self, *, shape: tuple[int, ...], du: int, dv: int, vth: int, bias_mant: int | np.ndarray,
                 bias_exp: int | np.ndarray, reset_interval: int, reset_offset: int, reset_mode: str = "zero",
                 refractory: int = 0, quiet: int = 0, name: str | None = None) -> None:
        super().__init__(shape=shape, du=du, dv=dv, vth=vth, bias_mant=bias_mant, bias_exp=bias_exp, name=name)
        if reset_mode not in RESET_MODES:
            raise ValueError(f"reset_mode must be one of {RESET_MODES}, got {reset_mode!r}")
        if isinstance(refractory, bool) or refractory not in REFRACTORY_STEPS:
            raise ValueError(f"refractory must be one of {REFRACTORY_STEPS}, got {refractory!r}")
        for arg, value in (("reset_interval", reset_interval), ("reset_offset", reset_offset), ("quiet", quiet)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"{arg} must be an integer, got {value!r}")
        if reset_interval < 1:
            raise ValueError(f"reset_interval must be at least 1, got {reset_interval}")
        if reset_offset < 0:
            raise ValueError(f"reset_offset must be 0 or more, got {reset_offset}")
        if not 0 <= quiet <= reset_interval - 1:
            raise ValueError(f"quiet must lie in [0, reset_interval - 1] = [0, {reset_interval - 1}], got {quiet}")
        self.proc_params["reset_interval"] = int(reset_interval)
        self.proc_params["reset_offset"] = int(reset_offset)
        self.proc_params["reset_mode"] = reset_mode
        self.proc_params["refractory"] = int(refractory)
        self.proc_params["quiet"] = int(quiet)
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.u = Var(shape=shape, init=0)
        self.v = Var(shape=shape, init=0)
        self.du = Var(shape=(1,), init=du)
        self.dv = Var(shape=(1,), init=dv)
        self.vth = Var(shape=(1,), init=vth)
        self.bias_mant = Var(shape=shape, init=bias_mant)
        self.bias_exp = Var(shape=shape, init=bias_exp)


@implements(proc=CubaNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyCubaNeuronModelFixed(AbstractPyLifModelFixed):
    """Fixed-point model of :class:`CubaNeuron`: ``PyLifResetModelBitAcc`` plus reset mode, refractory step and
    quiet steps."""

    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    vth: int = LavaPyType(int, np.int32, precision=17)

    def __init__(self, proc_params: dict) -> None:
        super().__init__(proc_params)
        self.effective_vth = 0
        self.reset_interval: int = proc_params["reset_interval"]
        self.reset_offset: int = proc_params["reset_offset"] % self.reset_interval
        self.subtract: bool = proc_params["reset_mode"] == "subtract"
        self.quiet: int = proc_params["quiet"]
        self.refractory: bool = proc_params["refractory"] > 0
        self.fired: np.ndarray | None = None  # the step before's spikes (refractory; None: none yet)

    def scale_threshold(self) -> None:
        """MSB-align the threshold with ``v``: ``vth << 6``, as Loihi does."""
        self.effective_vth = np.left_shift(self.vth, self.vth_shift)
        self.isthrscaled = True

    def spiking_activation(self) -> np.ndarray:
        """Spike where the voltage exceeds the scaled threshold."""
        return self.v > self.effective_vth

    def reset_voltage(self, spike_vector: np.ndarray) -> None:
        """Set the spiking neurons' voltage to zero, or subtract the scaled threshold from it."""
        if self.subtract:
            self.v[spike_vector] -= self.effective_vth
        else:
            self.v[spike_vector] = 0

    def run_spk(self) -> None:
        """One step: periodic state reset, LIF update (v held the step after a spike where refractory), voltage
        reset; spikes sent unless in a quiet step."""
        a_in_data = self.a_in.recv()
        phase = (self.time_step - self.reset_offset) % self.reset_interval
        if phase == 0:
            self.u *= 0
            self.v *= 0
            self.fired = None
        self.scale_bias()
        if not self.isthrscaled:
            self.scale_threshold()
        held = self.fired if self.refractory else None
        v_kept = self.v.copy() if held is not None else None
        self.subthr_dynamics(activation_in=a_in_data)
        spikes = self.spiking_activation()
        if held is not None:  # the step after a spike: v kept, no spike
            self.v[held] = v_kept[held]
            spikes = spikes & ~held
        self.reset_voltage(spike_vector=spikes)
        self.fired = spikes.copy()
        if phase >= self.reset_interval - self.quiet:
            spikes = np.zeros_like(spikes)
        self.s_out.send(spikes)
