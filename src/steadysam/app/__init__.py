"""``steadysam annotate``: a local web app for labelling datasets with stable interactive
segmentation (docs/app.md).

``store`` (SQLite project), ``session`` (model, object sessions, background embeddings),
``project`` (the actions), ``stability`` (ΔIoU of a click), ``security`` + ``server`` (HTTP),
``launch`` (open and serve), ``cli`` (the subcommands); ``labels`` / ``masks`` / ``formats``
(export and import files). Importing this package imports nothing heavy.
"""
