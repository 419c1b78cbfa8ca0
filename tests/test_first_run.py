"""What a newcomer sees from train.py: limits given on resume that work as the hint says, the learning rate
the next step uses, a console without the config dump, the CPU threads, and hints typeable where the user is."""
import signal

from conftest import FAST, stop_at


def test_limits_given_on_resume_work_as_the_hints_say(project):
    project.ok(*(FAST + ["--max-steps", "30"]))
    res = project.ok(*(FAST + ["--resume"]))
    assert "already finished: it reached --max-steps 30 (in epoch 1 of --epochs 15)" in res.stderr, res.stderr
    assert "or with --epochs N alone (that drops the step limit)" in res.stderr
    res = project.ok(*(FAST + ["--resume", "--epochs", "2"]))  # as the hint says: --epochs alone
    assert "config change on resume: max_steps 30 -> 0" in res.stderr
    assert "done: 90 steps, 2 epochs" in res.stderr, res.stderr[-2000:]
    res = project.ok(*(FAST + ["--resume"]))
    assert "already finished: its --epochs 2 are done (step 90). To train longer, resume with a higher --epochs" \
        in res.stderr, res.stderr
    res = project.ok(*(FAST + ["--resume", "--epochs", "3", "--lr", "0.01"]))
    # cosine at step 90 of 135: 0.01 * (1 + cos(2 pi / 3)) / 2
    assert "learning rate of the next step (91): 0.0025 (--lr 0.01 on the cosine schedule, at step 90 of 135)" \
        in res.stderr, res.stderr[:3000]


def test_the_console_says_where_the_config_is_instead_of_printing_it(project):
    res = project.ok(*(FAST + ["--max-steps", "3", "--threads", "1"]))
    assert "batch_size: 32" not in res.stderr
    assert "config: every value in %s" % (project.run_dir("digits-mlp") / "config.yaml") in res.stderr
    assert "batch_size: 32" in (project.run_dir("digits-mlp") / "train.log").read_text()
    assert "batch_size: 32" in (project.run_dir("digits-mlp") / "config.yaml").read_text()
    assert "parameters on cpu (1 CPU threads)" in res.stderr


def test_the_default_threads_leave_room_for_other_work(project):
    env = {k: v for k, v in project.env.items() if k != "OMP_NUM_THREADS"}
    import os
    want = max(1, min(4, (os.cpu_count() or 1) // 2))
    res = project.run(*(FAST + ["--max-steps", "2"]), env=env)
    assert res.returncode == 0 and "(%d CPU threads)" % want in res.stderr, res.stderr[-2000:]
    res = project.run(*(FAST + ["--max-steps", "2", "--run-name", "omp"]), env=dict(env, OMP_NUM_THREADS="1"))
    assert "(1 CPU threads)" in res.stderr


def test_a_stop_inside_the_container_names_the_command_for_the_host(project):
    project.env["HOST_COMMAND_PREFIX"] = "docker compose run --rm trainer"
    code, out, _ = stop_at(project.start(*(FAST + ["--epochs", "50", "--log-every", "1"])), signal.SIGTERM,
                           "step ", 5)
    assert code == 0
    assert ("continue with: ./run.sh --run-name digits-mlp (or: docker compose run --rm trainer python train.py "
            "--resume --run-name digits-mlp)") in out, out[-2000:]
