"""Weights files, from any publisher: read once (``read``, ``torch_file``: no code from a file ever runs), recognised
(each publisher's ``Format``, listed by ``atrous.registry``), translated and loaded with a report (``load``), or a
whole model built from what a file says about itself (``pretrained.from_pretrained``); the model zoo's files
(``zoo``)."""
