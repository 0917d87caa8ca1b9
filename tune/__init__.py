"""tune: the hyper-parameter search over the dogs trainable (Ray Tune + Optuna TPE + ASHA). See docs/search.md."""
