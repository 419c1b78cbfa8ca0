"""TensorBoard: every statistic the issue names, read back with TensorBoard's own readers; hparams inside
the run (no stray extra run); a resumed run continues the same run with no duplicate or out-of-order step."""
import signal

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import FAST, raw_events, scalars, stop_at, summary_steps

ARGS = FAST + ["--epochs", "2", "--log-every", "5", "--eval-every", "20", "--ckpt-every", "30"]


def _accumulator(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_run_logs_scalars_images_text_and_hparams_in_one_run(project):
    project.ok(*ARGS)
    run_dir = project.run_dir("digits-mlp")
    acc = _accumulator(run_dir)
    tags = acc.Tags()
    for tag in ("train/loss", "train/acc", "train/lr", "train/grad_norm", "z_perf/samples_per_sec",
                "z_perf/step_time_ms", "z_perf/data_wait_ms", "val/loss", "val/acc"):
        assert tag in tags["scalars"], tag
    assert [e.step for e in acc.Scalars("val/acc")] == [20, 40, 60, 80, 90]
    assert [e.step for e in acc.Scalars("train/loss")][:3] == [5, 10, 15]
    assert all(e.value > 0 for e in acc.Scalars("z_perf/samples_per_sec"))
    # the best checkpoint after the eval at step 20 and the periodic one at 30 stalled the loop; each stall is
    # logged at the next logging step (the step-20 log line comes before the step-20 eval)
    assert [e.step for e in acc.Scalars("z_perf/ckpt_stall_ms")][:2] == [25, 35]
    assert "val/confusion_matrix" in tags["images"]
    image = acc.Images("val/confusion_matrix")[-1]
    assert image.width == image.height > 160 and image.encoded_image_string[:4] == b"\x89PNG"
    assert {"config/text_summary", "command/text_summary"} <= set(tags["tensors"])
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "lr: 0.05" in text and "model: mlp" in text
    assert "train.py" in acc.Tensors("command/text_summary")[0].tensor_proto.string_val[0].decode()
    # hparams: experiment + session start/end summaries in this run's own folder, no sub-run
    plugins = [v.metadata.plugin_data.plugin_name for e in raw_events(run_dir) for v in e.summary.value]
    assert plugins.count("hparams") == 3
    assert [p for p in run_dir.iterdir() if p.is_dir()] == []
    from tensorboard.plugins.hparams import plugin_data_pb2
    hp = [v for e in raw_events(run_dir) for v in e.summary.value if v.tag == "_hparams_/session_start_info"][0]
    info = plugin_data_pb2.HParamsPluginData.FromString(hp.metadata.plugin_data.content).session_start_info
    assert info.hparams["lr"].number_value == 0.05 and info.hparams["model"].string_value == "mlp"
    exp = [v for e in raw_events(run_dir) for v in e.summary.value if v.tag == "_hparams_/experiment"][0]
    metrics = plugin_data_pb2.HParamsPluginData.FromString(exp.metadata.plugin_data.content).experiment
    assert {m.name.tag for m in metrics.metric_infos} == {"%s/%s" % (split, name) for split in ("val", "test") for
                                                          name in ("loss", "acc", "balanced_acc", "f1")}
    assert [e.step for e in acc.Scalars("test/acc")] == [90]  # once, at the end, for the best checkpoint


def test_resumed_run_continues_the_same_run_without_duplicates(project):
    # kill -9 long after the checkpoint at step 30: steps 35..N were logged but are not in the checkpoint
    code, _, _ = stop_at(project.start(*ARGS), signal.SIGKILL, "step ", 50)
    assert code == -signal.SIGKILL
    run_dir = project.run_dir("digits-mlp")
    project.ok(*(ARGS + ["--resume"]))
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2
    for tag in ("train/loss", "train/lr", "val/acc", "z_perf/samples_per_sec"):
        steps = summary_steps(run_dir, tag)
        assert steps == sorted(set(steps)), (tag, steps)
    assert summary_steps(run_dir, "train/loss") == list(range(5, 91, 5))
    assert summary_steps(run_dir, "config/text_summary") == [0, 30]
    plugins = [v.metadata.plugin_data.plugin_name for e in raw_events(run_dir) for v in e.summary.value]
    assert plugins.count("hparams") == 3


def test_no_tensorboard_writes_no_event_file(project):
    project.ok(*(FAST + ["--max-steps", "3", "--no-tensorboard"]))
    assert not list(project.run_dir("digits-mlp").glob("events.out.tfevents.*"))
    assert (project.run_dir("digits-mlp") / "train.log").exists()


def test_scalars_helper_sees_the_same_values_as_the_log(project):
    res = project.ok(*(FAST + ["--max-steps", "10", "--log-every", "10"]))
    loss = scalars(project.run_dir("digits-mlp"))["train/loss"]
    line = [ln for ln in res.stderr.splitlines() if ln.startswith("step 10/")][0]
    assert loss[0][0] == 10 and "loss %.4f" % loss[0][1] in line
