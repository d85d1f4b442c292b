"""The Flax kits: :mod:`.nnx` (``flax.nnx``) and :mod:`.linen` (``flax.linen``), two kits in one folder.

What they share: :mod:`.arrays` (numpy in and out, the device), :mod:`.autodiff`
(value-and-grad), :mod:`.optim` (the shared optimizers as optax), :mod:`.layout` (a
network's variables, named alike in both), :mod:`.train` (the model as pure state and its
jitted training step); and :mod:`.driver`, the conformance drivers of both adapters. This
package imports nothing itself: each registry backend loads its own kit module.
"""
