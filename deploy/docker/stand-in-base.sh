#!/usr/bin/env bash
# A stand-in for python:3.11-slim-bookworm, for machines that reach no container registry (the
# Dockerfile's base cannot be pulled there): Debian bookworm from Debian's own packages
# (debootstrap) with its python3.11, laid out as the Dockerfile expects of the real base
# (python and pip in /usr/local/bin, pip free to install), plus this machine's CA bundle, so that
# builds reach the package registries this machine reaches. Run as root; `make image` runs it
# when the real base is absent. Usage: stand-in-base.sh TAG
set -euo pipefail
tag=${1:?usage: stand-in-base.sh TAG}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

command -v debootstrap >/dev/null || {
    echo "debootstrap is not installed: run \`make system-deps\` (as root)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "debootstrap needs root" >&2; exit 2; }

root=$(mktemp -d /var/tmp/mlpipe-stand-in-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3.11,python3-pip,ca-certificates \
    bookworm "$root" "$mirror" >"$root.log" 2>&1 \
    || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"

# the official image's layout: its python lives in /usr/local, outside the system's package
# manager, so pip installs into it freely (Debian marks its own python externally managed)
for name in python python3; do ln -sf /usr/bin/python3.11 "$root/usr/local/bin/$name"; done
for name in pip pip3; do ln -sf /usr/bin/pip3 "$root/usr/local/bin/$name"; done
rm -f "$root"/usr/lib/python3.11/EXTERNALLY-MANAGED
cp "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
# what Debian's own images configure: apt keeps no caches or translations in a layer, and dpkg
# installs no documentation (an image's `apt-get install` stays the size of what it installs)
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
printf '%s\n' 'Acquire::GzipIndexes "true";' 'Acquire::CompressionTypes::Order:: "gz";' \
    >"$root/etc/apt/apt.conf.d/docker-gzip-indexes"
printf 'path-exclude %s\n' '/usr/share/doc/*' '/usr/share/man/*' '/usr/share/info/*' \
    '/usr/share/locale/*' >"$root/etc/dpkg/dpkg.cfg.d/docker"
# what the slim image leaves out too: package caches, documentation, translations
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +

tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PYTHON_VERSION=3.11' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    --message "stand-in for python:3.11-slim-bookworm (debootstrap bookworm + python3.11)" \
    - "$tag" >/dev/null
echo "built $tag ($(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%d MB", $1/1e6}'))"
