"""Training of the heads we ship: the samplers of the papers (their losses: `engine.losses`), `vosembed train`."""
