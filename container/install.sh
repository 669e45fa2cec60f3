#!/bin/sh
# The image's install steps, run by the Dockerfile as the image's user (10001) and by
# tests/e2e/test_container.py into a fresh directory, so the test performs what the image does.
#
#   sh install.sh deps   create the virtualenv $VIRTUAL_ENV and install the dependencies named
#                        in ./pyproject.toml, with those of its extras in $EXTRAS (default
#                        "postgres mysql": the image speaks to every database); its own
#                        layer: a source change does not redo it
#   sh install.sh app    install the package in . without dependencies, then `pip check`
#                        that the deps layer had everything it needs
set -eu
: "${VIRTUAL_ENV:?set VIRTUAL_ENV to the virtualenv to install into}"
python="${PYTHON:-python3}"

case "${1:-}" in
deps)
    "$python" -m venv "$VIRTUAL_ENV"
    reqs="$(mktemp)"
    # tomllib is in the standard library from Python 3.11, the oldest version we support.
    "$VIRTUAL_ENV/bin/python" -c 'import sys, tomllib
with open("pyproject.toml", "rb") as fh:
    project = tomllib.load(fh)["project"]
reqs = list(project["dependencies"])
for extra in sys.argv[1:]:
    reqs += project["optional-dependencies"][extra]
print("\n".join(reqs))' ${EXTRAS-postgres mysql} > "$reqs"  # split into extras on purpose
    "$VIRTUAL_ENV/bin/python" -m pip install --no-cache-dir -r "$reqs"
    rm -f "$reqs"
    ;;
app)
    "$VIRTUAL_ENV/bin/python" -m pip install --no-cache-dir --no-deps .
    "$VIRTUAL_ENV/bin/python" -m pip check
    ;;
*)
    echo "usage: install.sh deps|app" >&2
    exit 2
    ;;
esac
