"""Kubernetes for the course (notebook 10): the chart under ``deploy/helm``, rendered and checked offline.

* :mod:`.chart` renders ``deploy/helm/vllm-hands-on`` with a values file through Helm's own
  library (``helm-python-sdk``: Helm in a PyPI wheel, no cluster, no ``helm`` binary) and
  validates every document with ``kubernetes-validate`` (the Kubernetes API's JSON schemas);
* :mod:`.values` writes the course's two values files (the 7B on two RTX 3090 nodes, ``smol``
  on CPUs) from the same settings every other command line comes from;
* ``.venv/bin/python -m helpers.kube render VALUES`` and ``... values KIND`` from a shell.
"""

from .chart import CHART_DIR, KUBE_VERSION, Rendered, load_values, render_chart
from .values import VALUES_FILES, course_values, values_text

__all__ = ["CHART_DIR", "KUBE_VERSION", "Rendered", "VALUES_FILES", "course_values", "load_values", "render_chart",
           "values_text"]
