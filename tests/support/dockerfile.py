"""Perform a Dockerfile's build steps on this machine, without a container engine.

No Docker engine runs where the tests run, so tests/e2e/test_container.py reads the
Dockerfiles and does what they say into a directory that stands for the image's root
filesystem: the image's own absolute paths (`/opt/...`, `/src`, `/etc/supervisor`,
`/var/lib/supervisor`) are rewritten under that directory, everywhere else is the host.

What is performed: ENV, WORKDIR, COPY (from the build context) and RUN as the image's
non-root user, i.e. every RUN after a USER instruction that names a non-root user; a
derived image (FROM another) keeps its base's USER. The RUN steps before that (creating
the user, as root) are not performed: they are returned in `Image.root_steps` so that a
test can see what it left out. HEALTHCHECK, ENTRYPOINT and CMD are parsed (exec form).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

_IMAGE_PATHS = re.compile(
    r"(?<![\w./-])(/(?:opt|src|etc/supervisor|var/lib/supervisor)(?=[/\s:'\"]|$))")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuations joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    result = []
    for line in logical:
        word, _, rest = line.strip().partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


@dataclass
class Image:
    """What a build left: the root directory, its environment, working directory and user."""

    root: Path
    env: dict[str, str]
    workdir: Path
    user: str = "root"
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    root_steps: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)

    def rooted(self, text: str) -> str:
        """`text` with the image's own absolute paths moved under `root`."""
        return _IMAGE_PATHS.sub(lambda m: str(self.root) + m.group(1), text)

    def build(self, dockerfile: Path, context: Path, timeout: float = 600) -> None:
        """Perform `dockerfile`'s steps with `context` as the build context."""
        args: dict[str, str] = {}
        for word, rest in instructions(dockerfile.read_text()):
            if word == "ARG":
                name, _, default = rest.partition("=")
                args[name] = default
            elif word == "LABEL":
                for item in shlex.split(rest):
                    key, _, value = item.partition("=")
                    self.labels[key] = _expand(value, args)
            elif word == "ENV":
                for item in shlex.split(rest):
                    key, _, value = item.partition("=")
                    self.env[key] = _expand(self.rooted(value), self.env)
            elif word == "WORKDIR":
                self.workdir = Path(self.rooted(rest))
                self.workdir.mkdir(parents=True, exist_ok=True)
            elif word == "USER":
                self.user = rest
            elif word == "COPY":
                self._copy(rest, context)
            elif word == "RUN":
                self._run(rest, timeout)
            elif word == "HEALTHCHECK":
                self.healthcheck = [self.rooted(a) for a in json.loads(rest.split(" CMD ", 1)[1])]
            elif word == "ENTRYPOINT":
                self.entrypoint = [self.rooted(a) for a in json.loads(rest)]
            elif word == "CMD":
                self.cmd = [self.rooted(a) for a in json.loads(rest)]

    def _copy(self, rest: str, context: Path) -> None:
        parts = [p for p in shlex.split(rest) if not p.startswith("--")]
        *sources, dest = parts
        target = self.workdir / self.rooted(dest) if not dest.startswith("/") \
            else Path(self.rooted(dest))
        for source in sources:
            origin = context / source
            if origin.is_dir():
                shutil.copytree(origin, target, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
            else:
                into = target if dest.endswith("/") or len(sources) > 1 else target.parent
                into.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, into / origin.name if into == target else target)

    def _run(self, command: str, timeout: float) -> None:
        if self.user.split(":")[0] in ("root", "0"):
            self.root_steps.append(command)
            return
        done = subprocess.run(["/bin/sh", "-c", self.rooted(command)], cwd=self.workdir,
                              env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if done.returncode != 0:
            raise AssertionError(f"RUN {command} exited {done.returncode}:\n"
                                 + done.stdout[-4000:] + done.stderr[-4000:])


def _expand(value: str, known: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: known.get(m.group(1), os.environ.get(
        m.group(1), "")), value)


def new_image(root: Path) -> Image:
    """An empty image: the host's PATH, root's working directory `/`."""
    root.mkdir(parents=True, exist_ok=True)
    return Image(root=root, env={"PATH": os.environ["PATH"], "HOME": str(root)},
                 workdir=root)
