"""Views: what an experiment feeds the encoder, each with the same small interface.

A view is built from a dataset reader (probes.data) and the encoder's input transform, and offers::

    view.dataset        # torch Dataset of (normalised image tensor, label)
    view.labels         # int64 numpy array [N]
    view.class_names    # list[str]
    view.split          # the split it covers, e.g. "all", "test", "val2017"
    len(view)
    view.identity()     # JSON-able: everything the inputs depend on (feature-cache keys, record data identity)
    view.describe()     # JSON-able settings and counts for result records (numbers and enums, no prose)

Modules: ``transforms`` (input transforms and normalisation), ``parts`` (keypoint-centred part crops and
the dense keypoint view), ``objects`` (CIFAR-10 images, COCO object crops), ``classification`` (a task's
train and evaluation views).
"""
