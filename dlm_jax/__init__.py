"""dlm_jax: masked (absorbing-state) diffusion language models in JAX/Flax NNX.

Arrays carry their shapes in their names (`logits_BxLxV`: batch x length x vocabulary). The letters:

| letter | dimension |
|---|---|
| B | batch (sequences) |
| L | sequence length (tokens); never layers, which get no letter (`layer_keys`, `balance_per_layer`) |
| D | model width (D2: half of it, the sinusoidal time features) |
| V | vocabulary |
| H | attention heads |
| K | width of one attention head (K2: half of it, the RoPE frequencies) |
| Q, J | queries and attended positions of a cross-attention (J: memory slots, cells, or tokens) |
| M | EcoHybrid memory slots |
| N | HRM memory cells |
| P | content vectors per HRM memory cell |
| C | HRM H-cycles |
| S | reverse (sampling) steps |
| A | gradient-accumulation micro-batches |
| W | windows: evaluation windows, or a retrieval datastore's |
| R | retrieved neighbours (EcoHybrid's retrieval-conditioned slots) |
| E | the retrieval key's dimension |

A lowercase letter in a shape is a config scalar (`k`: top-k). Inside a function whose body speaks of one dimension
only, short names (`h`, `mem`) stand for the suffixed arrays.
"""
