#!/usr/bin/env bash
# Remove everything the project created: containers, images, volumes, the native env, /tmp/<project> and
# the logs and models/tmp symlinks. Keeps data/, models/best and models/latest unless --all.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=docker/lib.sh
source "$ROOT/docker/lib.sh"

usage() {
  cat <<EOF
Usage: ./purge.sh [--all] [--yes] [--dry-run] [-h | --help]

  --all       also delete data/ and the checkpoints in models/best and models/latest
  --yes       do not ask before deleting
  --dry-run   list what would be removed, remove nothing
It never touches anything outside this folder and /tmp/<project>.
EOF
}

all=0 yes=0 dry=0
while (($#)); do
  case "$1" in
    --all) all=1 ;;
    --yes | -y) yes=1 ;;
    --dry-run | -n) dry=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "Usage: ./purge.sh [--all] [--yes] [--dry-run] (unknown option: $1)" >&2; exit 2 ;;
  esac
  shift
done

load_project

# Refuse before anything is deleted when a symlink points somewhere this project did not make.
for pair in "logs:$TMP_DIR/logs" "models/tmp:$TMP_DIR/model"; do
  link="$ROOT/${pair%%:*}" want="${pair#*:}"
  if [[ -L "$link" && "$(readlink "$link")" != "$want" ]]; then
    die "refusing: $link points to $(readlink "$link"), not $want; remove that link yourself"
  fi
done

plan=()
docker_ok=0
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  docker_ok=1
  find_compose
  if [[ -n "$(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_NAME")" ]]; then
    plan+=("containers of compose project $COMPOSE_NAME")
  fi
  if docker image inspect "$IMAGE:latest" >/dev/null 2>&1; then plan+=("image $IMAGE:latest"); fi
  if [[ -n "$(docker volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_NAME")" ]]; then
    plan+=("volumes of compose project $COMPOSE_NAME")
  fi
fi
native_pids=()
for pid_file in "$ROOT/logs/.train-native.pid" "$ROOT/logs/.tensorboard-native.pid"; do
  if [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    native_pids+=("$(cat "$pid_file")")
    plan+=("native process $(cat "$pid_file") ($(basename "$pid_file" .pid | tr -d .))")
  fi
done
conda_env=0
if command -v conda >/dev/null 2>&1 && conda env list | awk '{print $1}' | grep -qx "$PROJECT"; then
  conda_env=1
  plan+=("conda env $PROJECT")
fi
for path in "$ROOT/.venv" "$TMP_DIR" "$ROOT/logs" "$ROOT/models/tmp" "$ROOT/.env"; do
  if [[ -e "$path" || -L "$path" ]]; then plan+=("$path"); fi
done
if ((all)); then
  for folder in data models/best models/latest; do
    if [[ -n "$(find "$ROOT/$folder" -mindepth 1 ! -name .gitkeep -print -quit 2>/dev/null)" ]]; then
      plan+=("$ROOT/$folder/*")
    fi
  done
fi

if ((${#plan[@]} == 0)); then
  say "nothing to remove"
  exit 0
fi
say "will remove:"
printf '  %s\n' "${plan[@]}"
if ((!all)); then say "keeping data/, models/best and models/latest (--all removes them too)"; fi
if ((dry)); then
  say "dry run: nothing removed"
  exit 0
fi
if ((!yes)); then
  [[ -t 0 ]] || die "not a terminal: run ./purge.sh --yes to remove without asking"
  read -r -p "Remove these? [y/N] " answer
  [[ "$answer" == [yY]* ]] || { say "nothing removed"; exit 1; }
fi

remove_tree() {  # files the containers wrote belong to the user; a root-owned leftover goes via the image
  local path="$1"
  rm -rf "$path" 2>/dev/null && return 0
  if ((docker_ok)) && docker image inspect "$IMAGE:latest" >/dev/null 2>&1; then
    docker run --rm --user 0 --entrypoint rm -v "$(dirname "$path"):/purge" "$IMAGE:latest" -rf "/purge/$(basename "$path")"
  fi
  [[ ! -e "$path" ]] || die "could not remove $path; remove it by hand"
}

if ((${#native_pids[@]})); then
  kill "${native_pids[@]}" 2>/dev/null || true
  for _ in $(seq 1 20); do kill -0 "${native_pids[@]}" 2>/dev/null || break; sleep 0.5; done
fi
if ((docker_ok)); then
  docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_NAME" | xargs -r docker rm -f >/dev/null
fi
remove_tree "$TMP_DIR"
if ((all)); then
  for folder in data models/best models/latest; do
    while IFS= read -r -d '' path; do remove_tree "$path"; done \
      < <(find "$ROOT/$folder" -mindepth 1 -maxdepth 1 ! -name .gitkeep -print0)
  done
fi
if ((docker_ok)); then
  docker volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_NAME" | xargs -r docker volume rm >/dev/null
  docker network ls -q --filter "label=com.docker.compose.project=$COMPOSE_NAME" | xargs -r docker network rm >/dev/null
  if docker image inspect "$IMAGE:latest" >/dev/null 2>&1; then docker image rm -f "$IMAGE:latest" >/dev/null; fi
fi
if ((conda_env)); then conda env remove -y -n "$PROJECT" >/dev/null; fi
rm -rf "$ROOT/.venv"
for link in "$ROOT/logs" "$ROOT/models/tmp"; do
  if [[ -L "$link" ]]; then rm -f "$link"; elif [[ -d "$link" ]]; then remove_tree "$link"; fi
done
rm -f "$ROOT/.env"
say "done"
