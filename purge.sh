#!/usr/bin/env bash
# Remove everything the project created: containers, images, volumes, the native env, /tmp/<project> and
# the logs and models/tmp symlinks. Keeps data/, models/best and models/latest unless --all.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=docker/lib.sh
source "$ROOT/docker/lib.sh"

usage() {
  cat <<EOF
Usage: ./purge.sh [--all] [--everything] [--yes] [--dry-run] [-h | --help]

  --all       also delete data/ and the checkpoints in models/best and models/latest
  --everything  --all, and what the air-gapped and test steps made: docker/wheels/, the local/ base image
              named in .env (.ci/make-base-image.sh), .venv-test/ and test-artifacts/
  --yes       do not ask before deleting
  --dry-run   list what would be removed, remove nothing
It never touches anything outside this folder and /tmp/<project>: it follows no symbolic link out of them,
leaves a /tmp/<project> that another checkout or user made, and stops only this checkout's own trainer and
TensorBoard processes.
EOF
}

all=0 yes=0 dry=0 everything=0
while (($#)); do
  case "$1" in
    --all) all=1 ;;
    --everything) all=1 everything=1 ;;
    --yes | -y) yes=1 ;;
    --dry-run | -n) dry=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "Usage: ./purge.sh [--all] [--everything] [--yes] [--dry-run] (unknown option: $1)" >&2; exit 2 ;;
  esac
  shift
done

load_project

# Refuse before anything is deleted when a symlink points somewhere this project did not make.
for pair in "${LINKS[@]}"; do
  link="${pair%%:*}" want="${pair#*:}"
  if [[ -L "$link" && "$(readlink "$link")" != "$want" ]]; then
    die "refusing: $link points to $(readlink "$link"), not $want; remove that link yourself"
  fi
done

# True when PATH's folder (links resolved) is this checkout or inside it: what purge may delete in.
inside_project() {
  local parent
  parent="$(realpath -m "$(dirname "$1")")"
  [[ "$parent" == "$ROOT" || "$parent" == "$ROOT"/* ]]
}

# True when PID runs this checkout's trainer or TensorBoard (a stale pid file may name anything else by now).
our_process() {
  local pid="$1" cwd cmd
  cwd="$(readlink "/proc/$pid/cwd" 2>/dev/null)" || return 1
  cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cwd" == "$ROOT" && "$cmd" =~ (train\.py|src\.launch|tensorboard) ]]
}

plan=()
notes=()
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
for pid_file in "$NATIVE_PID" "$TB_NATIVE_PID"; do
  if pid="$(live_pid "$pid_file")" && our_process "$pid"; then  # the process started, not one that got its pid
    native_pids+=("$pid")
    plan+=("native process $pid ($(basename "$pid_file" .pid | tr -d .))")
  fi
done
conda_env=0
if command -v conda >/dev/null 2>&1 && conda env list | awk '{print $1}' | grep -qx "$PROJECT"; then
  conda_env=1
  plan+=("conda env $PROJECT")
fi
tmp_ours=1
tmp_problem="$(tmp_dir_problem)"
if [[ -n "$tmp_problem" ]]; then
  tmp_ours=0
  notes+=("leaving $TMP_DIR: ${tmp_problem%%;*}")
elif [[ -e "$TMP_DIR" ]]; then
  plan+=("$TMP_DIR")
fi
base_image=""
if ((everything && docker_ok)); then
  base_image="$(env_file_value BASE_IMAGE)"  # before .env goes; only a base image this checkout made
  made_by="$(docker image inspect -f '{{ index .Config.Labels "template.checkout" }}' "$base_image" 2>/dev/null || true)"
  if [[ "$base_image" == local/* && "$made_by" == "$ROOT" ]]; then
    plan+=("image $base_image (the air-gapped route's base image)")
  else
    if [[ "$base_image" == local/* && -n "$made_by" && "$made_by" != "<no value>" ]]; then
      notes+=("leaving image $base_image: another checkout made it ($made_by)")
    elif [[ "$base_image" == local/* ]] && docker image inspect "$base_image" >/dev/null 2>&1; then
      notes+=("leaving image $base_image: this checkout did not make it")
    fi
    base_image=""
  fi
fi
made=("$ROOT/logs" "$ROOT/models/tmp" "$ROOT/.env")
if ((everything)); then made+=("$ROOT/docker/wheels" "$ROOT/.venv-test" "$ROOT/test-artifacts"); fi
# .venv only when setup.sh made it (its mark, naming this checkout): a .venv made by hand stays, also after
# setup.sh installed the requirements into it
if [[ "$(cat "$ROOT/.venv/.made-by-setup" 2>/dev/null || true)" == "$ROOT" ]]; then made+=("$ROOT/.venv"); fi
for path in "${made[@]}"; do
  if [[ -e "$path" || -L "$path" ]]; then
    if inside_project "$path"; then plan+=("$path"); else notes+=("leaving $path: it lies outside this checkout (through a link)"); fi
  fi
done
all_folders=()
if ((all)); then
  for folder in data models/best models/latest; do
    if [[ -L "$ROOT/$folder" ]] || ! inside_project "$ROOT/$folder/x"; then
      notes+=("leaving $ROOT/$folder: it is a link out of this checkout")
    elif [[ -n "$(find "$ROOT/$folder" -mindepth 1 ! -name .gitkeep -print -quit 2>/dev/null)" ]]; then
      plan+=("$ROOT/$folder/*")
      all_folders+=("$folder")
    fi
  done
fi
if ((everything)) && [[ -d "/tmp/pytest-of-$(id -un)" ]]; then  # outside this checkout: said, not removed
  notes+=("pytest keeps its temporary folders in /tmp/pytest-of-$(id -un) ($(du -sh "/tmp/pytest-of-$(id -un)" 2>/dev/null | cut -f1)), shared by every checkout; when no tests run: rm -rf /tmp/pytest-of-$(id -un)")
fi
if ((${#notes[@]})); then printf '%s: %s\n' "$(basename "$0")" "${notes[@]}"; fi

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
if ((tmp_ours)); then remove_tree "$TMP_DIR"; fi
for folder in "${all_folders[@]}"; do
  while IFS= read -r -d '' path; do remove_tree "$path"; done \
    < <(find "$ROOT/$folder" -mindepth 1 -maxdepth 1 ! -name .gitkeep -print0)
done
if ((docker_ok)); then
  docker volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_NAME" | xargs -r docker volume rm >/dev/null
  docker network ls -q --filter "label=com.docker.compose.project=$COMPOSE_NAME" | xargs -r docker network rm >/dev/null
  if docker image inspect "$IMAGE:latest" >/dev/null 2>&1; then docker image rm -f "$IMAGE:latest" >/dev/null; fi
  if [[ -n "$base_image" ]]; then docker image rm "$base_image" >/dev/null || say "kept $base_image: it is in use"; fi
fi
if ((conda_env)); then conda env remove -y -n "$PROJECT" >/dev/null; fi
for path in "${made[@]}"; do
  inside_project "$path" || continue
  if [[ -L "$path" || -f "$path" ]]; then rm -f "$path"; elif [[ -d "$path" ]]; then remove_tree "$path"; fi
done
say "done"
