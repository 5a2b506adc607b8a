"""Training of the heads we ship: the losses of the papers, their samplers, `vosembed train`."""
