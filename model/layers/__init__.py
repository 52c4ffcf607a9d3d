"""Small Flax NNX building blocks; each family is a choice among them, made from config flags."""
