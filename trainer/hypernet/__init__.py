"""The hypernetwork library: a context-conditioned generator of a target MLP's weights.

Independent of TFX: it imports only TensorFlow (tf_keras), NumPy and itself, so it can
be used, tested and benchmarked on its own. The seams, one module each:

- `target_spec`: the target MLP's parameter tensors (shapes, fan-in, init gain).
- `context`: what conditions the generator, and its encoding into a vector.
- `generator`: conditioning -> flat target parameters, one registered kind per design.
- `functional_target`: the target MLP run on generated parameters, three named ways.
- `hypernetwork`: the composite Keras model that chooses between them.
- `materialize`: one context's generated target as an ordinary Keras model.
- `intercepts`: per-context output intercepts, fitted after training in closed form.
- `keras_env`: the Keras 2 guard and AutoGraph/trace switches the models rely on.

Nothing is re-exported here: import from the module that defines a name.
"""
