#!/usr/bin/env bash
# The suite's `make image`, in the background from a run's first integration test on
# (tests/integration/conftest.py: image_build), so that the cold build (minutes: the stand-in
# base, every locked wheel) overlaps the other modules instead of holding one xdist process.
# Starts Debian's dockerd first where none answers (root only; its pid in FOLDER/dockerd.pid,
# stopped by the run's end). The build runs at the lowest CPU priority (nice 19: the daemon
# it started, whose build steps' containers inherit it, and make's own processes), so it takes
# the cores the tests leave idle rather than slowing them; the daemon is back at 0 once the
# images are built, for the containers the tests run. Writes the exit status to FOLDER/rc when done: 77 when no daemon
# can run here (the image tests skip, or fail in CI, with FOLDER/build.log's last line).
# Usage: build_images.sh FOLDER
set -u
folder=${1:?usage: build_images.sh FOLDER}
log=$folder/build.log
root=$(cd "$(dirname "$0")/../.." && pwd)
finish() {
    echo "$1" >"$folder/rc.tmp" && mv "$folder/rc.tmp" "$folder/rc"
    exit 0
}
command -v docker >/dev/null || { echo "docker is not installed: run \`make system-deps\`" >>"$log"; finish 77; }
if ! docker info >/dev/null 2>&1; then
    dockerd=$(command -v dockerd || { test -x /usr/sbin/dockerd && echo /usr/sbin/dockerd; }) || {
        echo "dockerd is not installed: run \`make system-deps\` (Debian's docker.io)" >>"$log"
        finish 77
    }
    [ "$(id -u)" = 0 ] || {
        echo "no Docker daemon answers and only root can start one (sudo dockerd)" >>"$log"
        finish 77
    }
    setsid nice -n 19 "$dockerd" >"$folder/dockerd.log" 2>&1 &
    echo $! >"$folder/dockerd.pid"
    for _ in $(seq 120); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || { tail -20 "$folder/dockerd.log" >>"$log"; finish 1; }
fi
nice -n 19 make -C "$root" image >>"$log" 2>&1
status=$?
if [ -f "$folder/dockerd.pid" ]; then
    # the daemon and its containerd (a child of it, niced with it); new containers inherit 0
    renice -n 0 -p $(pgrep -x dockerd) $(pgrep -x containerd) >/dev/null 2>&1
fi
finish $status
