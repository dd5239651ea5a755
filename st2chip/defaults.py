"""Every default the CLI and the Python API share, defined once.

The commands' ``--help`` texts and the functions of :mod:`st2chip.api` both read
these names, so ``st2chip map model.nir`` and ``st2chip.lower(st2chip.load("model.nir"))``
give the same ChipGraph.
"""

from __future__ import annotations

from st2chip.chip.lower import DEFAULT_DECAY_GROUPS, HEADROOM

LOWRANK = "auto"             # a DSP low-rank layer: factored or multiplied out, whichever costs less on chip
PRECISION = "8"              # 8-bit weights; "auto"/"16" add residual groups (on the MNIST-1D RNN: +48 % / +50 %
                             # synaptic ops, chip accuracy 57.8 / 57.7 % vs 57.7 %)
TARGET = "loihi2"            # the chip a graph is lowered to and run for (st2chip.families.TARGETS)
RESOURCES = "loihi2"         # the chip resource model a network is placed on
MAX_CHIPS = 1                # chips a placement may use (None: no limit)
BACKEND = "engine"           # where a ChipGraph runs: st2chip's bit-exact engine (Lava: "lava")
BATCH_SIZE = 256             # engine samples per batch
LAVA_TARGET = "lava-sim"     # where the lava backend runs: Lava's fixed-point CPU simulator
VERIFY_BACKENDS = ("float", "reference", "lava")
LAVA_SAMPLES = 20            # samples verify cross-checks on Lava, bit for bit against the engine
XYLOSIM_SAMPLES = 20         # samples verify --target xylo-... cross-checks on xylosim against the engine
LAVA_MODE = "layers"         # verify's Lava check: one population at a time on the engine's recorded inputs
                             # ("whole": the whole network in one Lava run, one OS process per population/group)
LAVA_PROCESSES = 64          # layers mode: at most this many Lava processes (about 17 MiB each) per Lava run
MAX_DROP = 2.0               # points of accuracy the chip may lose against float before verify fails
MIN_AGREEMENT = 95.0         # percent float-vs-chip spike agreement (worst layer, layer by layer) verify requires
ALLOW_SILENT = False         # verify fails when an output layer never spikes / always spikes on every sample
PROFILE = "45nm"             # the energy profile: E_AC = 0.9 pJ, E_MAC = 4.6 pJ
COMPARE_TARGETS = ("loihi2", "xylo-audio3")  # st2chip compare: the chips set side by side
EXPORT_DT = 1e-3             # seconds per step recorded when st2chip exports its own models
DEMO_OUT = "runs/demo"       # st2chip demo: output folder, test samples run on every backend, training epochs
DEMO_SAMPLES = 100
DEMO_EPOCHS = 25
QUANTIZE_EPOCHS = 60         # st2chip quantize: chip-in-the-loop fine-tuning epochs and Adam learning rate
QUANTIZE_LR = 1e-3
QUANTIZE_HOLDOUT = 0.2       # st2chip quantize model.nir --inputs: fraction of the samples held out (seeded)

__all__ = ["DEFAULT_DECAY_GROUPS", "HEADROOM", "LOWRANK", "TARGET", "XYLOSIM_SAMPLES", "RESOURCES", "MAX_CHIPS",
           "BACKEND", "BATCH_SIZE",
           "LAVA_TARGET", "VERIFY_BACKENDS", "LAVA_SAMPLES", "LAVA_MODE", "LAVA_PROCESSES", "MAX_DROP", "MIN_AGREEMENT",
           "ALLOW_SILENT", "PROFILE", "COMPARE_TARGETS",
           "EXPORT_DT", "DEMO_OUT", "DEMO_SAMPLES", "DEMO_EPOCHS",
           "QUANTIZE_EPOCHS", "QUANTIZE_LR", "QUANTIZE_HOLDOUT", "PRECISION"]
