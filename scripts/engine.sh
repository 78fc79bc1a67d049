#!/usr/bin/env bash
# Make sure a Docker engine answers. Does nothing when one already does and
# every tool the tests use is there (a user's own Docker, or DOCKER_HOST).
# Otherwise, on Debian, installs a current engine (Engine 26: BuildKit built
# in, the buildx plugin, the docker CLI) and the tools the tests use, starts
# dockerd (classic image store, Debian's default) and waits.
#   Debian 13 (trixie):   docker.io docker-cli docker-buildx
#   Debian 12 (bookworm): the same three from Debian 13's suite, through an
#                         apt source for trixie pinned at 100 (nothing else
#                         moves: libc and runc stay Debian 12's)
# A dockerd older than 25 that does not answer is upgraded the same way.
set -u
LIMIT="${IMAGEKIT_ENGINE_WAIT:-90}"
MIN_ENGINE=25
APT_LOG=/tmp/imagekit-apt.log
TRIXIE_SOURCES=/etc/apt/sources.list.d/imagekit-trixie.sources
TRIXIE_PIN=/etc/apt/preferences.d/imagekit-trixie

say() { echo "engine: $*" >&2; }
answers() { timeout 10 docker info >/dev/null 2>&1; }
# dockerd's version ("26.1.5+dfsg1"), empty when there is none
dockerd_version() { dockerd --version 2>/dev/null | sed -n 's/^Docker version \([^ ,]*\).*/\1/p'; }
check_buildx() {
  if ! timeout 20 docker buildx version >/dev/null 2>&1; then
    say "docker buildx does not work here (BuildKit builds need it; imagekit's classic builds do not):" \
        "install docker-buildx, or put the plugin in ~/.docker/cli-plugins"
  fi
}

# The tools the tests and the demo use: command -> Debian package. sshd (by its
# path: /usr/sbin is not on every user's PATH) is for the ssh:// engine tests,
# which start their own on a free port.
tools=(docker-compose:docker-compose debootstrap:debootstrap docker-registry:docker-registry
       htpasswd:apache2-utils skopeo:skopeo zip:zip /usr/sbin/sshd:openssh-server)
need_pkgs=()
for t in "${tools[@]}"; do
  command -v "${t%%:*}" >/dev/null 2>&1 || need_pkgs+=("${t#*:}")
done

# Why the local engine must be installed or upgraded (empty: it need not).
engine_why=""
answering=0
if answers; then
  answering=1
elif [ -z "${DOCKER_HOST:-}" ]; then
  have="$(dockerd_version)"
  if ! command -v dockerd >/dev/null 2>&1; then
    engine_why="no Docker engine is installed"
  elif [ -n "$have" ] && [ "${have%%.*}" -lt "$MIN_ENGINE" ] 2>/dev/null; then
    engine_why="dockerd ${have} is older than ${MIN_ENGINE}"
  fi
fi

if [ "$answering" = 1 ] && [ ${#need_pkgs[@]} -eq 0 ]; then
  check_buildx
  exit 0
fi

if [ -n "$engine_why" ] || [ ${#need_pkgs[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
    if [ "$answering" = 1 ]; then
      say "engine answers; missing tools (${need_pkgs[*]}) are needed only by the tests"
      check_buildx; exit 0
    fi
    say "no Docker engine answers and this is not a root Debian machine: start your Docker, or set DOCKER_HOST"; exit 1
  fi

  engine_pkgs=()
  cli_if_known=0
  if [ -n "$engine_why" ]; then
    codename="$(. /etc/os-release 2>/dev/null; echo "${VERSION_CODENAME:-}")"
    case "$codename" in
      bookworm)
        # Debian 13's engine on Debian 12: its binaries need only glibc 2.34.
        if [ ! -e "$TRIXIE_SOURCES" ]; then
          say "adding Debian 13's suite as an apt source pinned at 100 ($TRIXIE_SOURCES)"
          printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' 'Suites: trixie' \
            'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
            > "$TRIXIE_SOURCES" || { say "cannot write $TRIXIE_SOURCES"; exit 1; }
        fi
        if [ ! -e "$TRIXIE_PIN" ]; then
          printf '%s\n' 'Package: *' 'Pin: release n=trixie' 'Pin-Priority: 100' \
            > "$TRIXIE_PIN" || { say "cannot write $TRIXIE_PIN"; exit 1; }
        fi
        engine_pkgs=(docker.io/trixie docker-cli/trixie docker-buildx/trixie) ;;
      trixie)
        engine_pkgs=(docker.io docker-cli docker-buildx) ;;
      *)
        engine_pkgs=(docker.io docker-buildx); cli_if_known=1 ;;
    esac
  fi

  say "${engine_why:+${engine_why}: }installing ${engine_pkgs[*]}${engine_pkgs:+ }${need_pkgs[*]} (log: $APT_LOG)"
  if ! apt-get update -qq >"$APT_LOG" 2>&1; then
    say "apt-get update failed (log: $APT_LOG)"; exit 1
  fi
  # Elsewhere the CLI is a package of its own only on newer releases.
  if [ "$cli_if_known" = 1 ] && apt-cache show docker-cli >/dev/null 2>&1; then
    engine_pkgs+=(docker-cli)
  fi
  # openssh-server apart: its install starts the ssh service (port 22) through
  # invoke-rc.d, which a policy-rc.d refusing every start prevents (made only
  # where the machine has none, and only while that install runs); the engine's
  # own service starts as Debian means it to.
  main_pkgs=() sshd_pkgs=()
  for p in "${need_pkgs[@]}"; do
    if [ "$p" = openssh-server ]; then sshd_pkgs+=("$p"); else main_pkgs+=("$p"); fi
  done
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${engine_pkgs[@]}" "${main_pkgs[@]}" ca-certificates iptables >>"$APT_LOG" 2>&1; then
    say "apt-get install ${engine_pkgs[*]}${engine_pkgs:+ }${main_pkgs[*]} failed (log: $APT_LOG)"; exit 1
  fi
  if [ ${#sshd_pkgs[@]} -gt 0 ]; then
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [ ! -e "$policy" ]; then
      printf '%s\n' '#!/bin/sh' '# imagekit scripts/engine.sh: no service starts while it installs' \
        'exit 101' > "$policy" && chmod 755 "$policy" && made_policy=1
      trap '[ "$made_policy" = 1 ] && rm -f "$policy"' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${sshd_pkgs[@]}" >>"$APT_LOG" 2>&1
    installed=$?
    if [ "$made_policy" = 1 ]; then
      rm -f "$policy"; made_policy=0
    fi
    if [ "$installed" != 0 ]; then
      say "apt-get install ${sshd_pkgs[*]} failed (log: $APT_LOG)"; exit 1
    fi
  fi
  [ -n "$engine_why" ] && say "installed dockerd $(dockerd_version)"
fi

if [ "$answering" = 1 ] || answers; then
  check_buildx
  exit 0
fi

if [ -n "${DOCKER_HOST:-}" ]; then
  say "DOCKER_HOST=${DOCKER_HOST} does not answer; start that engine or unset DOCKER_HOST"; exit 1
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
  say "starting dockerd (log: /var/log/imagekit-dockerd.log)"
  setsid dockerd >/var/log/imagekit-dockerd.log 2>&1 < /dev/null &
fi
for _ in $(seq "$LIMIT"); do
  answers && { say "ready: dockerd $(dockerd_version)"; check_buildx; exit 0; }
  sleep 1
done
say "dockerd did not answer within ${LIMIT}s; see /var/log/imagekit-dockerd.log"
exit 1
