"""The small model both data-parallel tests train: two AionBlocks, one with k_update=2."""

import keras

from aion_keras import AionBlock

DIM = 8


def build(initial=None):
    model = keras.Sequential([keras.Input((DIM,)),
                              AionBlock(keras.layers.Dense(DIM, activation="tanh"), DIM, beta=0.5),
                              AionBlock(keras.layers.Dense(DIM), DIM, beta=0.5, k_update=2)])
    if initial is not None:
        model.set_weights(initial)
    model.compile(keras.optimizers.SGD(0.1), "mse")
    return model
