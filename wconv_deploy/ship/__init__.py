"""Shipping exported models to Triton Inference Server: the model configuration (:mod:`.config`),
the offline repository check (:mod:`.check`), packaging (:mod:`.package`), serving over Triton's
protocols for local testing (:mod:`.serve`) and load tests (:mod:`.loadtest`)."""
