"""emotibatch: EmotiEffLib facial emotion recognition at cluster scale.

The data path, one module per step: sources -> decode -> detect -> embed -> track -> sink -> aggregate.
"""
