"""Render the course's Helm chart offline and validate what it produces (notebook 10).

:func:`render_chart` merges a values file over the chart's defaults, checks the result against
the chart's ``values.schema.json``, renders every template with Helm's library and validates
each Kubernetes document against the API schemas of :data:`KUBE_VERSION` (strict: an unknown
field is an error, as ``kubectl apply --validate=strict`` would say). Every failure is one
:class:`~helpers.errors.DeployError` naming the file, the key or the template, and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..errors import DeployError

ROOT = Path(__file__).resolve().parents[3]
CHART_DIR = ROOT / "deploy" / "helm" / "vllm-hands-on"
#: The Kubernetes version the documents are validated against (a recent minor release).
KUBE_VERSION = "1.33.0"


@dataclass
class Rendered:
    """What a values file renders to: each template's text, the documents, one line per resource."""

    values_file: str
    manifests: dict[str, str]
    documents: list[dict[str, Any]] = field(default_factory=list)

    def kinds(self) -> list[str]:
        return [f"{d['kind']}/{d['metadata']['name']}" for d in self.documents]

    def find(self, kind: str, suffix: str = "") -> dict[str, Any]:
        """The one document of ``kind`` whose name ends with ``suffix``."""
        found = [d for d in self.documents if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
        if len(found) != 1:
            raise KeyError(f"{len(found)} {kind} documents named *{suffix} in {self.values_file}: {self.kinds()}")
        return found[0]

    def container(self, kind: str, suffix: str, name: str) -> dict[str, Any]:
        spec = self.find(kind, suffix)["spec"]["template"]["spec"]
        for container in spec["containers"]:
            if container["name"] == name:
                return container
        raise KeyError(f"no container {name!r} in {kind}/*{suffix} of {self.values_file}")

    def text(self) -> str:
        """All documents as one YAML stream, as ``helm template`` prints them."""
        return "\n".join(f"---\n# Source: {path}\n{body.strip()}" for path, body in sorted(self.manifests.items())
                         if body.strip())


def _shown(path: Path) -> str:
    """A path inside the repository as the learner types it (deploy/helm/...), others as given."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def load_values(path: str | Path) -> dict[str, Any]:
    """A values file as a mapping; a missing file or bad YAML is one clear error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DeployError(f"{path}: cannot read the values file ({exc.strerror}). Pass a file from deploy/helm/, "
                          "e.g. deploy/helm/values-cpu-smol.yaml.") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DeployError(f"{path}: not valid YAML{line}: {problem}. Check the indentation there "
                          "(spaces only, two per level).") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise DeployError(f"{path}: a values file is a mapping of keys (model:, vllm:, router: ...), "
                          f"not a {type(values).__name__}.")
    return values


def _helm():
    try:
        import helm_python
    except ImportError:
        raise DeployError("helm-python-sdk is not installed in this Python: bash course.sh install "
                          "(requirements/common.txt pins it).") from None
    return helm_python


def _validate(documents: list[dict[str, Any]], kube_version: str, values_file: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        raise DeployError("kubernetes-validate is not installed in this Python: bash course.sh install "
                          "(requirements/common.txt pins it).") from None

    problems = []
    for document in documents:
        name = f"{document.get('kind')}/{(document.get('metadata') or {}).get('name')}"
        try:
            kubernetes_validate.validate(document, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path) or "(the document)"
            problems.append(f"{name}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{name}: Kubernetes {kube_version} has no schema for {document.get('apiVersion')} "
                            f"{document.get('kind')}")
        except (kubernetes_validate.utils.VersionNotSupportedError, kubernetes_validate.InvalidSchemaError):
            raise DeployError(f"Kubernetes {kube_version}: kubernetes-validate has no schemas for that version; "
                              f"use one of {', '.join(sorted(set(kubernetes_validate.utils.all_versions()))[-3:])} "
                              f"(or {KUBE_VERSION}, the course's).") from None
    if problems:
        raise DeployError(f"{values_file}: the chart rendered, but Kubernetes {kube_version} would refuse "
                          f"{len(problems)} document(s):\n  " + "\n  ".join(problems))


def render_chart(values: str | Path | Mapping[str, Any], *, chart_dir: str | Path = CHART_DIR,
                 release: str = "course", namespace: str = "vllm", kube_version: str = KUBE_VERSION,
                 validate: bool = True) -> Rendered:
    """Render ``chart_dir`` with ``values`` (a file, or a mapping) and validate every document."""
    helm = _helm()
    source = str(values) if isinstance(values, (str, Path)) else "values"
    overrides = load_values(values) if isinstance(values, (str, Path)) else dict(values)
    try:
        chart = helm.Chart.load(str(chart_dir))
    except helm.HelmError as exc:
        raise DeployError(f"{chart_dir}: Helm cannot load the chart: {exc}") from None
    try:
        chart.validate_schema(chart.merge_values(overrides))
    except helm.HelmError as exc:
        reasons = "; ".join(line.strip("- ").strip() for line in str(exc).splitlines()[1:] if line.strip()) or str(exc)
        raise DeployError(f"{source}: the values do not fit the chart's values.schema.json: {reasons}. "
                          f"See {_shown(Path(chart_dir) / 'values.yaml')} for every key and what it takes.") from None
    try:
        manifests = chart.render(overrides, name=release, namespace=namespace, is_install=True)
    except helm.HelmError as exc:
        message = str(exc).split("error calling fail: ")[-1]
        raise DeployError(f"{source}: the chart failed to render: {message}") from None
    rendered = Rendered(values_file=source, manifests={path: text for path, text in manifests.items()
                                                        if not path.endswith("NOTES.txt")})
    for path, text in sorted(rendered.manifests.items()):
        try:
            documents = [doc for doc in yaml.safe_load_all(text) if doc]
        except yaml.YAMLError as exc:
            raise DeployError(f"{source}: {path} rendered to text that is not YAML ({exc}); check that "
                              "template's indentation (nindent) around the values it prints.") from None
        odd = [doc for doc in documents if not isinstance(doc, dict) or "kind" not in doc or "metadata" not in doc]
        if odd:
            raise DeployError(f"{source}: {path} rendered something that is not a Kubernetes document: "
                              f"{str(odd[0])[:120]}")
        rendered.documents += documents
    if validate:
        _validate(rendered.documents, kube_version, source)
    return rendered
