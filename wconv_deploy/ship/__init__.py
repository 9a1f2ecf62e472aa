"""Shipping exported models to a server: Triton Inference Server model repositories (:mod:`.triton`)."""
