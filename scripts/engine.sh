#!/usr/bin/env bash
# Make sure a Docker engine answers. Does nothing when one already does
# (a user's own Docker, or DOCKER_HOST). Otherwise, on Debian, installs
# Debian's engine and the tools the tests use, starts dockerd and waits.
set -u
LIMIT="${IMAGEKIT_ENGINE_WAIT:-90}"

say() { echo "engine: $*" >&2; }
answers() { timeout 10 docker info >/dev/null 2>&1; }

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need_pkgs+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
command -v docker-registry >/dev/null 2>&1 || need_pkgs+=(docker-registry apache2-utils)

if answers && [ ${#need_pkgs[@]} -eq 0 ]; then
  exit 0
fi

if [ ${#need_pkgs[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
    if answers; then
      say "engine answers; missing tools (${need_pkgs[*]}) are needed only by the tests"; exit 0
    fi
    say "no Docker engine answers and this is not a root Debian machine: start your Docker, or set DOCKER_HOST"; exit 1
  fi
  say "installing ${need_pkgs[*]} from Debian's packages"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${need_pkgs[@]}" ca-certificates iptables >/tmp/imagekit-apt.log 2>&1; }; then
    say "apt-get install ${need_pkgs[*]} failed (log: /tmp/imagekit-apt.log)"; exit 1
  fi
fi

answers && exit 0

if [ -n "${DOCKER_HOST:-}" ]; then
  say "DOCKER_HOST=${DOCKER_HOST} does not answer; start that engine or unset DOCKER_HOST"; exit 1
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
  say "starting dockerd (log: /var/log/imagekit-dockerd.log)"
  setsid dockerd >/var/log/imagekit-dockerd.log 2>&1 < /dev/null &
fi
for _ in $(seq "$LIMIT"); do
  answers && { say "ready"; exit 0; }
  sleep 1
done
say "dockerd did not answer within ${LIMIT}s; see /var/log/imagekit-dockerd.log"
exit 1
