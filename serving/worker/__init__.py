"""The device side of a step: inputs, the jitted programs, the model runner that owns the arrays."""
