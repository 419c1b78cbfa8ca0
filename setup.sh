#!/usr/bin/env bash
# Prepare everything training needs. Idempotent: a second run changes nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=docker/lib.sh
source "$ROOT/docker/lib.sh"

usage() {
  cat <<EOF
Usage: ./setup.sh [--native] [--stack cu92|cu12|cpu] [--data NAME] [--gpu | --cpu] [--no-build] [--check]
                  [-h | --help]

Checks the prerequisites, makes /tmp/<project>/{logs,model} and the logs and models/tmp symlinks to them,
writes .env, builds the image, and prepares the data in data/.

  --native      no Docker: a conda env named after the project (a .venv when conda is absent)
  --stack NAME  cu92 (default: Python 3.8, torch 1.7.1, CUDA 9.2), cu12 (torch 2.10, CUDA 12.8: Ampere,
                Hopper, Blackwell), cpu (torch 2.13, CPU only); kept in .env as STACK
  --data NAME   dataset to prepare: digits (embedded, the default), mnist, fashion-mnist, cifar10
  --gpu         require GPUs (fails unless Docker has the NVIDIA runtime);  --cpu: never use them
  --no-build    skip building the image
  --check       then run the doctor: versions, GPUs, whether this torch build supports them, one step
  -h, --help    this help

Settings (environment, else .env, else the stack's default): PROJECT (folder name), TB_PORT (6006),
TB_BIND (127.0.0.1), NPROC (1: processes run.sh and compose start), STACK (cu92), BASE_IMAGE, ENV_MANAGER (conda | venv), ENVIRONMENT, REQUIREMENTS,
VENV_PYTHON (python3), PIP_EXTRA_INDEX_URL, DATA_MIRROR (fetch datasets from a mirror).
EOF
}

native=0 data=digits gpu=auto build=1 check=0 stack=""
while (($#)); do
  case "$1" in
    --native) native=1 ;;
    --stack) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; stack="$2"; shift ;;
    --stack=*) stack="${1#--stack=}" ;;
    --check) check=1 ;;
    --data) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; data="$2"; shift ;;
    --data=*) data="${1#--data=}" ;;
    --gpu) gpu=yes ;;
    --cpu) gpu=no ;;
    --no-build) build=0 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "Usage: ./setup.sh [--native] [--stack NAME] [--data NAME] [--gpu | --cpu] [--no-build] [--check] (unknown option: $1)" >&2; exit 2 ;;
  esac
  shift
done

load_project
STACK="${stack:-$(setting STACK cu92)}"
case "$STACK" in  # each stack's files and defaults
  cu92) stack_env=environment.yml stack_req=requirements.txt stack_base=ubuntu:18.04
        stack_cuda="cuda>=9.2 driver>=396.37" stack_index="" ;;
  cu12) stack_env=stacks/cu12/environment.yml stack_req=stacks/cu12/requirements.txt stack_base=ubuntu:22.04
        stack_cuda="cuda>=12.8" stack_index="" ;;
  cpu) stack_env=stacks/cpu/environment.yml stack_req=stacks/cpu/requirements.txt stack_base=ubuntu:22.04
       stack_cuda="" stack_index=https://download.pytorch.org/whl/cpu ;;
  *) echo "Usage: ./setup.sh --stack cu92|cu12|cpu (unknown stack: $STACK)" >&2; exit 2 ;;
esac
if [[ "$STACK" != "$(env_file_value STACK)" ]]; then
  stack_setting() { local name="$1"; echo "${!name:-$2}"; }  # a new stack: .env's old values do not apply
else
  stack_setting() { setting "$@"; }
fi

make_folders() {
  ensure_tmp_dir
  mkdir -p "$ROOT/data" "$ROOT/models/best" "$ROOT/models/latest"
  for pair in "${LINKS[@]}"; do ensure_symlink "${pair%%:*}" "${pair#*:}"; done
}

write_env() {
  local compose_file="docker-compose.yml" new
  if [[ "$gpu" == yes ]] || { [[ "$gpu" == auto ]] && docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia; }; then
    docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia \
      || die "--gpu: Docker has no nvidia runtime; install the NVIDIA Container Toolkit (https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/install-guide.html) and restart Docker"
    compose_file="docker-compose.yml:docker/compose.gpu.yml"
  fi
  new="$(cat <<EOF
# Written by setup.sh; edit values here or set them in the environment before ./setup.sh.
COMPOSE_PROJECT_NAME=$COMPOSE_NAME
PROJECT=$PROJECT
CHECKOUT=$ROOT
HOST_UID=$(id -u)
HOST_GID=$(id -g)
COMPOSE_FILE=$compose_file
TB_PORT=$(setting TB_PORT 6006)
TB_BIND=$(setting TB_BIND 127.0.0.1)
NPROC=$(setting NPROC 1)
STACK=$STACK
BASE_IMAGE=$(stack_setting BASE_IMAGE "$stack_base")
ENV_MANAGER=$(setting ENV_MANAGER conda)
ENVIRONMENT=$(stack_setting ENVIRONMENT "$stack_env")
REQUIREMENTS=$(stack_setting REQUIREMENTS "$stack_req")
VENV_PYTHON=$(setting VENV_PYTHON python3)
PIP_EXTRA_INDEX_URL=$(stack_setting PIP_EXTRA_INDEX_URL "$stack_index")
CUDA_REQUIREMENT=$(stack_setting CUDA_REQUIREMENT "$stack_cuda")
DATA_MIRROR=$(setting DATA_MIRROR "")
EOF
)"
  if [[ "$new" != "$(cat "$ROOT/.env" 2>/dev/null || true)" ]]; then
    printf '%s\n' "$new" >"$ROOT/.env"
    say "wrote .env ($compose_file)"
  fi
}

# What the image and the data step are made from (the build inputs, the wheelhouse's files, .env, the dataset,
# the image's id): when none of them changed since the last setup, there is nothing to do.
fingerprint() {
  (
    cd "$ROOT"
    cat .env
    echo "$data $(docker image inspect --format '{{.Id}}' "$IMAGE:latest" 2>/dev/null || true)"
    find docker/Dockerfile environment.yml requirements.txt stacks configs src train.py -type f \
      ! -name '*.pyc' -print0 2>/dev/null | sort -z | xargs -0 sha256sum || true
    find docker/wheels -type f -printf '%f %s\n' 2>/dev/null | sort || true
  ) | sha256sum | cut -d' ' -f1
}

setup_docker() {
  require_docker
  make_folders
  write_env
  local stamp="$TMP_DIR/.setup-done"
  if ((build && !check)) && [[ -f "$stamp" && "$(cat "$stamp")" == "$(fingerprint)" ]]; then
    say "nothing changed since the last setup: image $IMAGE and dataset $data are ready"
    return 0
  fi
  rm -f "$stamp"
  if ((build)); then
    say "building the image (cached layers make this quick after the first time)"
    if ! compose build trainer; then
      say "the image did not build (see above). If its base image $(setting BASE_IMAGE "$stack_base") cannot be pulled here, build the CPU image with no registry at all (README: Air-gapped builds), as root:"
      printf '  %s\n' "${AIRGAPPED[@]}"
      die "or set BASE_IMAGE to a mirror of the base image, or train without Docker: ./run.sh --native"
    fi
  elif ! docker image inspect "$IMAGE:latest" >/dev/null 2>&1; then
    die "--no-build: there is no image $IMAGE:latest yet; run ./setup.sh without --no-build once"
  fi
  compose run --rm --no-deps trainer python train.py --prepare-data --dataset "$data" --progress plain
  if ((check)); then compose run --rm --no-deps trainer python train.py --doctor; fi
  if ((build)); then fingerprint >"$stamp"; fi
}

native_python() {  # the env's python, made when missing
  local name="$PROJECT"
  if command -v conda >/dev/null 2>&1; then
    if ! conda env list | awk '{print $1}' | grep -qx "$name"; then
      say "creating conda env '$name' from $stack_env" >&2
      conda env create -n "$name" -f "$ROOT/$stack_env" >&2 || die "conda could not create env '$name'"
    fi
    native_env_python
    return
  fi
  local venv="$ROOT/.venv" req="${REQUIREMENTS:-$stack_req}"
  if [[ "$STACK" == cu92 && -z "${REQUIREMENTS:-}" ]] && ! python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 8))'; then
    req=stacks/cpu/requirements.txt  # the cu92 pins need Python 3.8; a newer python3 takes the cpu stack
    say "python3 is not 3.8: the .venv gets the cpu stack ($req); install Miniforge for the cu92 stack" >&2
  fi
  if [[ ! -x "$venv/bin/python" ]]; then
    command -v python3 >/dev/null 2>&1 || die "neither conda nor python3 found: install Miniforge (https://github.com/conda-forge/miniforge) or Python 3.8+"
    say "creating $venv from $req (no conda found)" >&2
    python3 -m venv "$venv"
    printf '%s\n' "$ROOT" >"$venv/.made-by-setup"  # ownership: purge.sh removes only a .venv setup.sh made
  elif [[ ! -f "$venv/.made-by-setup" ]]; then
    say "using the .venv you made ($venv): $req goes into it; purge.sh leaves it in place" >&2
  fi
  local stamp="$venv/.requirements.sha256" want
  want="$(sha256sum "$ROOT/$req" | cut -d' ' -f1)"
  if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
    PIP_EXTRA_INDEX_URL="${PIP_EXTRA_INDEX_URL:-$stack_index}" "$venv/bin/python" -m pip install --quiet -r "$ROOT/$req" >&2 \
      || die "pip could not install $req into $venv"
    echo "$want" >"$stamp"
  fi
  native_env_python
}

setup_native() {
  make_folders
  write_env
  local python
  python="$(native_python)" || exit 1
  (cd "$ROOT" && "$python" train.py --prepare-data --dataset "$data" --progress plain)
  if ((check)); then (cd "$ROOT" && "$python" train.py --doctor); fi
}

if ((native)); then setup_native; else setup_docker; fi
if [[ -z "${CALLED_BY_RUN_SH:-}" ]]; then
  say "ready. Train with ./run.sh$( ((native)) && echo " --native") (or: docker compose up); TensorBoard on port $(setting TB_PORT 6006)"
fi
