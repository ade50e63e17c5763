#!/bin/sh
# Turns a Debian bookworm root with python3, python3-venv and ca-certificates into the operator's image
# root. Runs as root INSIDE that root: under chroot from image/build.sh (mmdebstrap's tree), or as a RUN
# step of operator/Dockerfile (debian:bookworm-slim), so both ways give the same contents.
#   slim.sh VERSION SOURCE_URL PIP_INSTALL_ARGS...
set -eu
VERSION=$1 SOURCE=$2
shift 2
HERE=$(cd "$(dirname "$0")" && pwd)
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=

# The operator in its own venv (Debian's python3, so the venv's interpreter link resolves in the image).
python3 -m venv /opt/stockade
/opt/stockade/bin/pip install -q "$@"
/opt/stockade/bin/pip uninstall -q -y pip setuptools

# Nothing that installs or builds software stays: the venv tooling, apt (in the Dockerfile's base),
# python3-distutils and lib2to3 (the venv tooling needed them), and whatever only those needed. What remains is the dependency closure
# of python3, ca-certificates and the Essential packages (image/prune.py), dpkg aside (below).
export DEBIAN_FRONTEND=noninteractive
unneeded=$(python3 "$HERE/prune.py" python3 ca-certificates)
# --force-remove-protected: apt is "Protected: yes" in bookworm.
dpkg --purge --force-depends --force-remove-essential --force-remove-protected $unneeded >/dev/null
rm -rf /var/lib/apt /var/cache/apt /etc/apt /var/cache/debconf/*-old

# A fixed, numeric non-root user: the chart's podSecurityContext (runAsUser/runAsGroup/fsGroup 65532).
grep -q '^stockade:' /etc/group || echo 'stockade:x:65532:' >> /etc/group
grep -q '^stockade:' /etc/passwd || echo 'stockade:x:65532:65532:Stockade operator:/tmp:/usr/sbin/nologin' >> /etc/passwd

# dpkg goes too: its programs and database. /var/lib/dpkg/status stays (under 100 kB), less dpkg's own
# entry, so that image scanners (trivy, grype) still see the Debian packages that are there and their
# versions; /etc/alternatives stays (the links it holds are in use).
for f in $(dpkg-query -L dpkg | grep -v -e '^/etc/alternatives' -e '^/var/lib/dpkg'); do
  [ -d "$f" ] || rm -f "$f"
done
find /var/lib/dpkg -mindepth 1 -maxdepth 1 ! -name status -exec rm -rf {} +
rm -rf /etc/dpkg
python3 -c 'import pathlib, re; p = pathlib.Path("/var/lib/dpkg/status"); p.write_text("\n\n".join(
    s for s in p.read_text().split("\n\n") if not re.match(r"Package: dpkg\n", s)))'
# The SBOM: the Debian packages in the status file and the venv's Python distributions.
/opt/stockade/bin/python "$HERE/sbom.py" /opt/stockade/sbom.spdx.json stockade "$VERSION" "$SOURCE"

# Documentation beyond the copyright files, manuals, translations, caches, logs.
find /usr/share/doc -mindepth 1 ! -name copyright ! -type d -delete 2>/dev/null || true
find /usr/share/doc -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf /usr/share/man /usr/share/info /usr/share/locale /usr/share/lintian /usr/share/linda \
  /var/cache/* /var/log/* /tmp/* /root/.cache /etc/machine-id
# Compiled files of modules that no longer exist (pip's own left-overs), none written later: the root
# filesystem is read-only and PYTHONDONTWRITEBYTECODE is set.
find / -xdev -name __pycache__ -type d -empty -delete 2>/dev/null || true
