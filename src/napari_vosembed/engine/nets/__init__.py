"""The networks we train on top of the frozen backbone, one module per method, with what sampling
their training and fine-tuning need. `vosembed train NAME` (`napari_vosembed.training`) fits them;
the methods load them (`engine.heads.Head.load`)."""
