# Helpers shared by setup.sh, run.sh and purge.sh (sourced, not run). Expects `set -euo pipefail` and ROOT.
# shellcheck shell=bash

die() { echo "$(basename "$0"): $*" >&2; exit 1; }
say() { echo "$(basename "$0"): $*"; }

# Value of KEY in .env (empty when absent). .env lines are KEY=VALUE with no quoting.
env_file_value() {
  local key="$1"
  [[ -f "$ROOT/.env" ]] || return 0
  sed -n "s/^${key}=//p" "$ROOT/.env" | tail -n 1
}

# The build settings that setup.sh keeps in .env, exported for commands that do not read .env themselves (test.sh:
# its Docker tests build the image as setup.sh did); a value set in the environment wins.
export_build_settings() {
  local key value
  for key in BASE_IMAGE ENV_MANAGER STACK; do
    value="$(env_file_value "$key")"
    if [[ -z "${!key:-}" && -n "$value" ]]; then
      export "$key=$value"
    fi
  done
}

# The air-gapped route (README "Air-gapped builds"), as setup.sh prints it when a base image cannot be pulled.
# shellcheck disable=SC2034  # used by setup.sh
AIRGAPPED=(
  ".ci/make-base-image.sh bookworm local/debian:bookworm"
  ".ci/make-wheelhouse.sh stacks/cpu/requirements.txt 3.11"
  "BASE_IMAGE=local/debian:bookworm ENV_MANAGER=venv STACK=cpu ./setup.sh"
)

# The project's name: $PROJECT, else .env's, else the checkout folder's name.
project_name() {
  local name="${PROJECT:-$(env_file_value PROJECT)}"
  name="${name:-$(basename "$ROOT")}"
  case "$name" in
    "" | . | .. | */* | *" "*) die "PROJECT '$name' is not a usable name (no '/', no spaces); set PROJECT=name" ;;
  esac
  echo "$name"
}

# Sets PROJECT, TMP_DIR (/tmp/<project>), COMPOSE_NAME (Docker's spelling) and IMAGE (<compose name>-trainer),
# and the shell's one spelling of the layout (src/files/paths.py has Python's): LINKS, "link:target" of the two
# /tmp symlinks; LOGS (the checkout's logs/); the native trainer's and TensorBoard's output and pid files.
# TMP_DIR belongs to one checkout of one user: mode 700, with a marker file (.checkout) naming this checkout.
# shellcheck disable=SC2034  # globals for the scripts that source this file
load_project() {
  PROJECT="$(project_name)"
  TMP_DIR="/tmp/$PROJECT"
  COMPOSE_NAME="$(compose_project_name "$PROJECT")"
  IMAGE="$COMPOSE_NAME-trainer"
  LOGS="$ROOT/logs"
  LINKS=("$LOGS:$TMP_DIR/logs" "$ROOT/models/tmp:$TMP_DIR/model")
  NATIVE_OUT="$LOGS/train-native.out" NATIVE_PID="$LOGS/.train-native.pid"
  TB_NATIVE_OUT="$LOGS/tensorboard-native.out" TB_NATIVE_PID="$LOGS/.tensorboard-native.pid"
}

# The file a trainer started with STARTED_MARK=MARK writes once it has begun (its checks passed): see
# RunPaths.started_mark.
started_file() { echo "$LOGS/.started-$1"; }

# Docker's spelling of it: lower case, only [a-z0-9_-].
compose_project_name() {
  echo "$1" | tr '[:upper:]' '[:lower:]' | sed 's/[^a-z0-9_-]/-/g; s/^[^a-z0-9]*//'
}

# Sets COMPOSE to the Compose command: v2 (`docker compose`), else v1 (`docker-compose`).
find_compose() {
  if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
  else
    die "Docker Compose is missing: install the compose plugin (https://docs.docker.com/compose/install/linux/), or docker-compose"
  fi
}

# BuildKit (for RUN --mount in the Dockerfile) also when the fallback is docker-compose v1.
# Where the output is not a terminal (a log file, a pipe): no control codes (Compose v2's --ansi never, plain build
# progress), only lines.
compose() {
  local plain=()
  if [[ ! -t 1 && "${COMPOSE[*]}" == "docker compose" ]]; then
    plain=(--ansi never)
  fi
  (cd "$ROOT" && DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1 \
    BUILDKIT_PROGRESS="$([[ -t 1 ]] && echo auto || echo plain)" "${COMPOSE[@]}" ${plain[@]+"${plain[@]}"} "$@")
}

# Fails with what to do when there is no usable Docker engine.
require_docker() {
  command -v docker >/dev/null 2>&1 \
    || die "Docker is not installed: install Docker Engine (https://docs.docker.com/engine/install/), or use --native"
  local err
  if ! err="$(docker info 2>&1 >/dev/null)"; then
    case "$err" in
      *"permission denied"*) die "no permission to use Docker: add yourself to the docker group (sudo usermod -aG docker \"\$USER\", then log in again)" ;;
      *) die "the Docker engine is not reachable (is dockerd running? try: sudo systemctl start docker): ${err%%$'\n'*}" ;;
    esac
  fi
  find_compose
}

# Start CMD... fully detached (new session, no inherited descriptors, output appended to LOG) with PYTHON;
# prints "PID START" for a pid file (START: see proc_start). It survives the terminal closing, and
# `./run.sh | tee x` does not wait for it.
detach() {
  local python="$1" log="$2"
  shift 2
  "$python" -c 'import subprocess, sys
with open(sys.argv[1], "ab") as out:
    pid = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                           start_new_session=True, close_fds=True).pid
with open("/proc/%d/stat" % pid) as f:
    print(pid, f.read().rsplit(")", 1)[1].split()[19])' "$log" "$@"
}

# The start time of process PID (clock ticks after boot, /proc/PID/stat field 22); fails when none runs.
proc_start() {
  local stat rest fields
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  rest="${stat##*) }"
  read -r -a fields <<<"$rest"
  [[ "${fields[0]}" != Z ]] || return 1  # exited, not yet reaped: no longer runs
  echo "${fields[19]}"
}

# The pid in pid file FILE ("PID START", from detach) while that very process runs; fails otherwise. A pid file
# left by an exited process names nothing, even once its pid belongs to another process.
live_pid() {
  local pid="" start=""
  [[ -f "$1" ]] || return 1
  read -r pid start _ <"$1" || true
  [[ "$pid" =~ ^[0-9]+$ && -n "$start" && "$(proc_start "$pid")" == "$start" ]] || return 1
  echo "$pid"
}

# NAME DEFAULT: the environment's value of NAME, else .env's, else DEFAULT.
setting() {
  local name="$1" default="$2" value
  value="${!name:-}"
  [[ -n "$value" ]] || value="$(env_file_value "$name")"
  echo "${value:-$default}"
}

# The native env's python: the conda env named after the project where conda exists, else .venv's.
native_env_python() {
  if command -v conda >/dev/null 2>&1; then
    conda run -n "$PROJECT" python -c 'import sys; print(sys.executable)'
  else
    echo "$ROOT/.venv/bin/python"
  fi
}

# True when something listens on 127.0.0.1:PORT.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Why TMP_DIR is not this checkout's own (empty when it is, or does not exist yet). An unmarked folder of
# ours that is empty, or that this checkout's links already point into, is adopted (made by an older setup).
tmp_dir_problem() {
  [[ -e "$TMP_DIR" || -L "$TMP_DIR" ]] || return 0
  local next="set PROJECT=another-name (in the environment or .env) and run again"
  if [[ -L "$TMP_DIR" || ! -d "$TMP_DIR" ]]; then
    echo "$TMP_DIR is not a folder (a link or a file); $next"; return 0
  fi
  local owner mode marker
  owner="$(stat -c %u "$TMP_DIR")" mode="$(stat -c %a "$TMP_DIR")"
  if [[ "$owner" != "$(id -u)" ]]; then
    echo "$TMP_DIR belongs to another user (uid $owner); $next"; return 0
  fi
  if (((8#$mode & 8#022) != 0)); then
    echo "$TMP_DIR can be written by other users (mode $mode), so anyone may have planted checkpoints there (a chmod would keep them); $next"
    return 0
  fi
  marker="$(cat "$TMP_DIR/.checkout" 2>/dev/null || true)"
  if [[ -z "$marker" ]]; then
    if [[ -z "$(ls -A "$TMP_DIR")" || "$(readlink "${LINKS[0]%%:*}" 2>/dev/null)" == "${LINKS[0]#*:}" ]]; then return 0; fi
    echo "$TMP_DIR was not made by this checkout (no $TMP_DIR/.checkout); $next"; return 0
  fi
  [[ "$marker" == "$ROOT" ]] || echo "$TMP_DIR belongs to another checkout ($marker); $next"
}

# TMP_DIR made (mode 700, marker) or checked; exits 2 with the next step when it is not this checkout's.
ensure_tmp_dir() {
  local problem
  problem="$(tmp_dir_problem)"
  if [[ -n "$problem" ]]; then echo "$(basename "$0"): $problem" >&2; exit 2; fi
  if [[ ! -d "$TMP_DIR" ]]; then (umask 077 && mkdir "$TMP_DIR"); fi
  [[ -f "$TMP_DIR/.checkout" ]] || printf '%s\n' "$ROOT" >"$TMP_DIR/.checkout"
  local pair
  for pair in "${LINKS[@]}"; do mkdir -p "${pair#*:}"; done
}

# The symlink LINK -> TARGET, made or repaired; refuses a link that points anywhere else.
ensure_symlink() {
  local link="$1" target="$2"
  mkdir -p "$target"
  if [[ -L "$link" ]]; then
    [[ "$(readlink "$link")" == "$target" ]] && return 0
    die "$link points to $(readlink "$link"), not $target; remove it (or set PROJECT) and run again"
  fi
  if [[ -d "$link" ]]; then  # a real folder (train.py made it before setup): move its contents over, said
    local count
    count="$(find "$link" -mindepth 1 | wc -l)"
    if ((count)); then
      echo "$(basename "$0"): moving $link ($count files and folders) to $target; $link becomes a link there" >&2
    fi
    cp -a "$link"/. "$target"/
    rm -rf "$link"
  elif [[ -e "$link" ]]; then
    die "$link exists and is not a folder; move it away and run again"
  fi
  ln -s "$target" "$link"
}
