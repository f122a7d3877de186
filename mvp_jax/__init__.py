"""mvp_jax: movement pruning for JAX/Flax. The public API is filled in as modules land."""
