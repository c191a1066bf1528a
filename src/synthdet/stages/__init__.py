"""The pipeline's stages, one module each (download, split, train, degrade, evaluate, the table
runs, tables). Each module declares its :class:`~synthdet.stages.base.Stage` and a ``run``;
:mod:`synthdet.stages.table` lists them in order and generates ``dvc.yaml``.

This file imports nothing, so importing one stage does not import (and depend on) the others.
"""
