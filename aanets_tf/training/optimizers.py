"""SGD with momentum as one fused kernel per variable.

Keras' `SGD` writes its momentum update as separate operations per variable
(two products, a difference, an assignment, an addition): about a thousand
graph operations for the AANet's 200 trainable variables, each traced from
Python when a phase starts and each dispatched at every step. TensorFlow's
`ResourceApplyKerasMomentum` kernel computes the same update
(`m = momentum * m - lr * g; w = w + m`, or the Nesterov form) in one
operation, with the same float32 arithmetic: the results are bit-identical
(`tests/optimizers_test.py`).
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="aanets_tf")
class MomentumSGD(keras.optimizers.SGD):
    """`keras.optimizers.SGD` whose momentum update is TensorFlow's fused kernel.

    Same arguments, variables and results as Keras' SGD. Falls back to Keras'
    own update without momentum, on another backend, or for a sparse gradient.
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.momentum == 0 or keras.backend.backend() != "tensorflow":
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        # Keras' SGD finds a variable's slot the same way.
        momentum = self.momentums[self._get_variable_index(variable)]
        dtype = variable.dtype
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle, accum=momentum.handle, lr=tf.cast(learning_rate, dtype),
            grad=tf.cast(gradient, dtype), momentum=tf.cast(self.momentum, dtype),
            use_locking=False, use_nesterov=self.nesterov)
