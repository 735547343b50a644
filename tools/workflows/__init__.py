"""The generator of the pack's example workflows (scripts/make_workflows.py is its command).

- catalogue.py: which workflows exist, their nodes, links, widget values and model files;
- serializer.py: a compact graph description -> the UI-format workflow and its API-format twin;
- notes/: the text of each workflow's Markdown note (notes/<workflow name>.md), filled in at generation time;
- pack.py: the pack itself (its folder, id and version, its node classes).
"""
