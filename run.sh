#!/usr/bin/env bash
# Set up, then train in the background with TensorBoard beside it. Arguments go to train.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=docker/lib.sh
source "$ROOT/docker/lib.sh"

usage() {
  cat <<EOF
Usage: ./run.sh [--native] [--nproc N] [-h | --help] [TRAIN.PY ARGUMENTS...]

Runs ./setup.sh, checks the arguments, starts train.py --resume auto ARGUMENTS in the background (it
survives closing the terminal and continues the run if it has checkpoints), starts TensorBoard, and
prints its URL and how to follow, stop and resume. Examples:
  ./run.sh                                  # the default model on the embedded digits
  ./run.sh --epochs 30 --lr 0.01 --run-name longer
  ./run.sh --config configs/cifar10-resnet.yaml
  ./run.sh --native                         # no Docker: conda env or .venv (see ./setup.sh --help)
  ./run.sh --nproc 4 --batch-size 512       # 4 processes (one per GPU) through torchrun; global batch 512
--nproc N (or NPROC in .env) starts N data-parallel processes on this machine (default 1).
Any option not listed here is a train.py option (python train.py --help); a bad one stops here with exit 2.
EOF
}

native=0
nproc=""
since=""  # when this start began: a time (Docker logs) or a byte offset (the native output file)
args=()
while (($#)); do
  case "$1" in
    --native) native=1 ;;
    --nproc) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; nproc="$2"; shift ;;
    --nproc=*) nproc="${1#--nproc=}" ;;
    -h | --help) usage; exit 0 ;;
    --) shift; args+=("$@"); break ;;
    *) args+=("$1") ;;
  esac
  shift
done

# This checkout's running Compose services (none where Docker or the setup is missing).
own_services() {
  [[ -f "$ROOT/.env" ]] && command -v docker >/dev/null 2>&1 || return 0
  (find_compose && compose ps --status running --services) 2>/dev/null || true
}

# Before any slow step: a trainer of this checkout that already runs stops here; TensorBoard reuses one of this
# checkout's (the Compose service or the native one: both serve logs/) or, where another program holds TB_PORT,
# takes the next free port, said here. Sets tb_reuse (docker | native | empty).
check_services() {
  local services port pid
  services="$(own_services)"
  if ((native)); then
    if pid="$(live_pid "$NATIVE_PID")"; then
      die "training is already running (pid $pid); follow it with: tail -f logs/train-native.out; stop it with: kill $pid"
    fi
  elif grep -qx trainer <<<"$services"; then
    die "training is already running in this checkout's trainer container; follow it with: docker compose logs -f trainer; stop it with: docker compose stop trainer"
  fi
  tb_reuse=""
  if grep -qx tensorboard <<<"$services"; then
    tb_reuse=docker
  elif live_pid "$TB_NATIVE_PID" >/dev/null; then
    tb_reuse=native
  elif port_busy "$TB_PORT"; then
    port="$TB_PORT"
    while port_busy "$port"; do port=$((port + 1)); done
    say "port $TB_PORT is taken by another program: TensorBoard goes on port $port (kept in .env as TB_PORT)"
    TB_PORT="$port"
  fi
  export TB_PORT
}

load_project
TB_PORT="$(setting TB_PORT 6006)"
check_services
setup_args=()
((native)) && setup_args+=(--native)
CALLED_BY_RUN_SH=1 "$ROOT/setup.sh" "${setup_args[@]}"
load_project
[[ -n "$nproc" ]] || nproc="$(setting NPROC 1)"
# the trainer writes started_file MARK once it has begun (a name no earlier start used)
STARTED_MARK="$$-$(date +%s%N)"
export STARTED_MARK
[[ "$nproc" =~ ^[1-9][0-9]*$ ]] || die "--nproc $nproc: give the number of processes to start, 1 or more"
TB_BIND="$(setting TB_BIND 127.0.0.1)"
url="http://$([[ "$TB_BIND" == 0.0.0.0 ]] && echo 127.0.0.1 || echo "$TB_BIND"):$TB_PORT"

# After a start: "running" once the trainer has begun training (it wrote its started file, see started_file)
# and still runs; else "exited CODE" (its last lines then say why: a finished run, a bad setting, an error).
# CHECK prints the state. At most 2 minutes.
settle() {
  local check="$1" state started
  started="$(started_file "$STARTED_MARK")"
  for _ in $(seq 1 240); do
    state="$($check)"
    [[ "$state" == running && ! -e "$started" ]] || break
    sleep 0.5
  done
  rm -f "$started"
  echo "$state"
}

# Run the foreground check of the arguments (train.py ... --prepare-data) quietly; on failure show what it said.
checked() {
  local out rc=0
  out="$("$@" 2>&1)" || rc=$?
  if ((rc)); then
    echo "$out" | grep -v '^$' | tail -n 5 >&2
    exit "$rc"
  fi
}

# Report a trainer that is no longer running: its last lines, and exit 1 unless it ended well (exit 0).
report_exit() {
  local state="$1" lines="$2"
  local code="${state#exited }"
  if [[ "$code" == 0 ]]; then
    say "the trainer has already finished; nothing runs in the background. It said:"
    echo "  ${lines//$'\n'/$'\n'  }"
    return 0
  fi
  say "training stopped right away (exit $code); nothing runs in the background. It said:"
  echo "  ${lines//$'\n'/$'\n'  }"
  exit 1
}

wait_for_tensorboard() {
  for _ in $(seq 1 60); do
    port_busy "$TB_PORT" && return 0
    sleep 1
  done
  die "TensorBoard did not come up on $url; see $1"
}

run_docker() {
  require_docker
  # Check the arguments (and fetch the data) in the foreground: a bad flag stops here, not in the background.
  checked compose run --rm --no-deps trainer python train.py --resume auto "${args[@]}" --prepare-data --progress plain
  local train_args="" services=(trainer tensorboard)
  ((${#args[@]})) && train_args="$(printf '%q ' "${args[@]}")"
  if [[ "$tb_reuse" == native ]]; then
    services=(trainer)  # this checkout's native TensorBoard already serves logs/
    say "TensorBoard: this checkout's native one already serves logs/ (reused)"
  fi
  since="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  NPROC="$nproc" TRAIN_ARGS="$train_args" compose up --detach "${services[@]}"
  local state
  state="$(settle trainer_state)"
  wait_for_tensorboard "docker compose logs tensorboard"
  if [[ "$state" != running ]]; then
    report_exit "$state" "$(trainer_output | grep -v '^$' | tail -n 3)"
    echo "  TensorBoard:  $url"
    return 0
  fi
  cat <<EOF
$(basename "$0"): training in the background (container $(compose ps --format '{{.Name}}' trainer)).
  TensorBoard:  $url
  follow:       docker compose logs -f trainer      (or: tail -f logs/<run>/train.log)
  stop:         docker compose stop trainer         (saves a checkpoint first)
  resume:       ./run.sh ${args[*]}
                or: docker compose run --rm trainer python train.py --resume ${args[*]}
  clean up:     ./purge.sh
EOF
}

trainer_output() { compose logs --no-log-prefix --since "$since" trainer 2>/dev/null; }

trainer_state() {  # the compose trainer: running, or exited CODE (a restart after a failure counts as failed)
  local id status code restarts
  id="$(compose ps -aq trainer 2>/dev/null | head -n 1)"
  [[ -n "$id" ]] || { echo "exited 1"; return; }
  read -r status code restarts < <(docker inspect --format '{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}' "$id")
  if [[ "$status" == running && "$restarts" == 0 ]]; then echo running
  elif [[ "$status" == running || "$status" == restarting ]]; then echo "exited 1"  # failed, restarted by docker
  else echo "exited $code"; fi
}

native_output() { tail -c "+$((since + 1))" "$NATIVE_OUT"; }

native_state() {  # the native trainer (pid in logs/.train-native.pid): running, or exited 0 / 1 from its output
  if live_pid "$NATIVE_PID" >/dev/null; then echo running
  elif tail -n 1 "$NATIVE_OUT" | grep -q "train.py: error"; then echo "exited 1"
  else echo "exited 0"; fi
}

run_native() {
  local python pid tb_pid pid_file="$NATIVE_PID" tb_pid_file="$TB_NATIVE_PID"
  python="$(native_env_python)"
  cd "$ROOT"
  checked "$python" train.py --resume auto "${args[@]}" --prepare-data --progress plain
  since="$(stat -c %s "$NATIVE_OUT" 2>/dev/null || echo 0)"
  detach "$python" "$NATIVE_OUT" "$python" -m src.launch "$nproc" --resume auto "${args[@]}" --progress plain \
    >"$pid_file"
  local tb_stop="docker compose stop tensorboard (this checkout's Docker TensorBoard, reused)"
  if [[ -z "$tb_reuse" ]]; then
    detach "$python" "$TB_NATIVE_OUT" "$(dirname "$python")/tensorboard" --logdir logs --host "$TB_BIND" \
      --port "$TB_PORT" >"$tb_pid_file"
  fi
  if [[ "$tb_reuse" != docker ]]; then
    read -r tb_pid _ <"$tb_pid_file"
    tb_stop="kill $tb_pid (./purge.sh stops it too)"
  fi
  local state
  read -r pid _ <"$pid_file"
  state="$(settle native_state)"
  wait_for_tensorboard "$TB_NATIVE_OUT"
  if [[ "$state" != running ]]; then
    report_exit "$state" "$(native_output | grep -v '^$' | tail -n 3)"
    echo "  TensorBoard:  $url      (stop it: $tb_stop)"
    return 0
  fi
  cat <<EOF
$(basename "$0"): training in the background (pid $pid).
  TensorBoard:  $url
  follow:       tail -f logs/train-native.out
  stop:         kill $pid                  (saves a checkpoint first)
  resume:       ./run.sh --native ${args[*]}
  TensorBoard:  stop it with $tb_stop
EOF
}

if ((native)); then run_native; else run_docker; fi
