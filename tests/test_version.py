"""One version, pyproject.toml's: the package, the OpenAPI document, the image label and the k8s and compose
image tags use it."""

from __future__ import annotations

import re
import tomllib

import service
from conftest import ROOT

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_package_and_openapi_report_the_pyproject_version(client):
    assert service.__version__ == VERSION
    assert client.get("/openapi.json").json["info"]["version"] == VERSION


def test_image_label_is_the_build_arg_that_image_test_passes_from_pyproject():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG VERSION$", dockerfile, re.M)
    assert 'org.opencontainers.image.version="${VERSION}"' in dockerfile
    script = (ROOT / "scripts" / "image-test.sh").read_text()
    assert "['project']['version']" in script and '--build-arg VERSION="$version"' in script


def test_kubernetes_image_tag_is_the_version():
    assert f"newTag: {VERSION}" in (ROOT / "deploy" / "k8s" / "kustomization.yaml").read_text()
    assert f"image: gradsvc:{VERSION}" in (ROOT / "deploy" / "k8s" / "deployment.yaml").read_text()


def test_compose_builds_with_the_version_and_the_operators_index():
    """`docker compose up --build` passed no build args: an empty label, and pip took the CUDA torch."""
    import yaml

    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    for name in ("app1", "app2"):
        app = compose["services"][name]
        assert app["image"] == f"gradsvc:{VERSION}"
        assert app["build"]["args"] == {"VERSION": VERSION, "PIP_EXTRA_INDEX_URL": "${PIP_EXTRA_INDEX_URL:-}"}
