"""The ``transformer`` SR backend: a small transformer, trained on generated data, writes
candidate expressions (Kamienny et al. 2022, "End-to-end symbolic regression with transformers").

* :mod:`.tokenizer` - expressions <-> prefix tokens (constants as sign, mantissa, exponent);
* :mod:`.generators` - (points, expression) pairs: ``general`` and ``mechanics``;
* :mod:`.model` - the set encoder and the constrained token decoder (beam search, sampling);
* :mod:`.train` - the training loop behind ``sym-mbrl train-sr``;
* :mod:`.backend` - candidates per coordinate for :class:`SymbolicDynamics`.

torch is imported by the modules, not by this package, so importing the world model stays light.
"""
